//! Host bindings for Spin's `variables` and `key-value` interfaces, generated from Spin's WIT
//! (`fermyon:spin@2.0.0`, vendored inline): the part of Spin's world that wasmtime-wasi and
//! wasmtime-wasi-http do not already provide.

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
        }
    ",
    with: {
        "fermyon:spin/key-value.store": crate::component::key_value::KeyValueStore,
    },
    // A handle the guest forged or already dropped is a trap, as in Spin.
    imports: { "fermyon:spin/key-value": trappable },
});
