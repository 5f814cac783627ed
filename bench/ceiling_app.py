"""The ceiling for bench/api_load.py: a bare FastAPI endpoint that returns a constant."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/constant")
def constant():
    return {"object": "constant", "value": 42}
