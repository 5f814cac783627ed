"""The `loraq` command as a client of a loraq server: files, jobs and models over the HTTP API.

Only httpx and rich here (no server code is imported), so the client commands start quickly and run on a
machine that has nothing else of loraq installed.
"""
