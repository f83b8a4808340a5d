"""The local AWS IoT Device Shadow service: semantics (engine), persistence (store), fronts (service)."""
