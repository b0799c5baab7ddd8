"""The frontend's API edge: error model, request validation and gRPC interceptors."""
