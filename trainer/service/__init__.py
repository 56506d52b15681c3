"""`trainer service`: a training service. The job store is the queue (store), each job a `trainer` process
(runner), an HTTP API in front (app), uploaded datasets (datasets), a bearer token (auth), and the client the
`trainer submit` / `trainer jobs` commands use (client)."""
