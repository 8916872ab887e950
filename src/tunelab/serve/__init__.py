"""Serve stage: the tuned model behind an HTTP API that OpenAI clients and Vertex AI speak.

FastAPI/uvicorn carry the HTTP; transformers generates, one request at a time (a CPU model is
compute-bound), with answers restricted to the labels for label tasks as in the evaluation.
Requests beyond `serve.max_waiting` get 503 at once; every bad request gets a 4xx JSON error.
"""
