"""The iotbridge wire contract, written once (see docs/protocol.md).

Imported by the API function, the Pi agent, the fleet simulator, the local
stack and the tests. Stdlib only and cheap to import: it sits on the Lambda
cold-start path and on small devices.
"""
