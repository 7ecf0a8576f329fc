"""The review workstation in the browser (`labmw web`, or the daemon's ``[web]``).

Server-rendered pages on Starlette and uvicorn: dashboard, held results with release/reject, the
audit trail, the message browser, and the administrator's accounts. Every page runs the same store,
review and audit functions as the CLI. Only :mod:`labmw.cli` imports this package.
"""
