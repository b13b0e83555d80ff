"""The HTTP server: the Open Inference Protocol over Starlette and uvicorn."""
