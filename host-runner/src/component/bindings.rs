//! Host bindings for Spin's `variables` and `key-value` interfaces (`fermyon:spin@2.0.0`) and
//! for the `wasi:keyvalue@0.2.0-draft2` store and atomics that Spin 3+/4 also serve (the
//! compare-and-swap the limit counters need), generated from their WIT, vendored inline: the
//! part of Spin's world that wasmtime-wasi and wasmtime-wasi-http do not already provide.

wasmtime::component::bindgen!({
    inline: "
        package fermyon:spin@2.0.0;

        interface variables {
            /// Get an application variable value for the current component.
            get: func(name: string) -> result<string, error>;

            /// The set of errors which may be raised by functions in this interface.
            variant error {
                invalid-name(string),
                undefined(string),
                provider(string),
                other(string),
            }
        }

        interface key-value {
            /// An open key-value store
            resource store {
                /// Open the store with the specified label.
                open: static func(label: string) -> result<store, error>;

                /// Get the value associated with the specified `key`; `ok(none)` if unset.
                get: func(key: string) -> result<option<list<u8>>, error>;

                /// Set the `value` associated with the specified `key`, overwriting any.
                set: func(key: string, value: list<u8>) -> result<_, error>;

                /// Delete the tuple with the specified `key` (no error if there is none).
                delete: func(key: string) -> result<_, error>;

                /// Return whether a tuple exists for the specified `key`
                exists: func(key: string) -> result<bool, error>;

                /// Return a list of all the keys
                get-keys: func() -> result<list<string>, error>;
            }

            /// The set of errors which may be raised by functions in this interface
            variant error {
                store-table-full,
                no-such-store,
                access-denied,
                other(string),
            }
        }

        world spin-host {
            import variables;
            import key-value;
            import wasi:keyvalue/store@0.2.0-draft2;
            import wasi:keyvalue/atomics@0.2.0-draft2;
        }

        package wasi:keyvalue@0.2.0-draft2 {
            interface store {
                variant error {
                    no-such-store,
                    access-denied,
                    other(string),
                }

                record key-response {
                    keys: list<string>,
                    cursor: option<string>,
                }

                /// Open the bucket with the specified identifier (a Spin store label).
                open: func(identifier: string) -> result<bucket, error>;

                resource bucket {
                    get: func(key: string) -> result<option<list<u8>>, error>;
                    set: func(key: string, value: list<u8>) -> result<_, error>;
                    delete: func(key: string) -> result<_, error>;
                    exists: func(key: string) -> result<bool, error>;
                    list-keys: func(cursor: option<string>) -> result<key-response, error>;
                }
            }

            interface atomics {
                use store.{bucket, error};

                variant cas-error {
                    store-error(error),
                    cas-failed(cas),
                }

                resource cas {
                    new: static func(bucket: borrow<bucket>, key: string) -> result<cas, error>;
                    current: func() -> result<option<list<u8>>, error>;
                }

                increment: func(bucket: borrow<bucket>, key: string, delta: s64) -> result<s64, error>;
                swap: func(cas: cas, value: list<u8>) -> result<_, cas-error>;
            }
        }
    ",
    with: {
        "fermyon:spin/key-value.store": crate::component::key_value::KeyValueStore,
        "wasi:keyvalue/store.bucket": crate::component::key_value::KeyValueStore,
        "wasi:keyvalue/atomics.cas": crate::component::key_value::KeyValueCas,
    },
    // A handle the guest forged or already dropped is a trap, as in Spin.
    imports: {
        "fermyon:spin/key-value": trappable,
        "wasi:keyvalue/store": trappable,
        "wasi:keyvalue/atomics": trappable,
    },
});
