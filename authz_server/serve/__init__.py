"""Process plumbing: the gRPC server, the decision thread, the HTTP side server and the worker
supervisor. Nothing here decides; it carries requests to an
:class:`~authz_server.authorizer.Authorizer` and its answers back."""
