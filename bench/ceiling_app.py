"""The ceiling for bench/api_load.py: a bare FastAPI endpoint that returns a constant."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/constant")
async def constant():  # async: no worker-thread hop, the fastest FastAPI endpoint there is
    return {"object": "constant", "value": 42}
