"""The gateway's HTTP door: one Starlette app, served by uvicorn beside the gRPC port.

- door.py: what every HTTP route shares — the caller's key checked by the gRPC side's authenticator, the
  servicer's blocking calls run on worker threads as that caller, errors as JSON with their HTTP status,
  and a call's engine work cancelled when its client goes away;
- openai_api.py: the OpenAI-compatible API (/v1/models, /v1/completions, /v1/chat/completions);
- server.py: the uvicorn server on a thread, bound before it starts (port 0 for tests).

Other HTTP APIs (the Tinker door) add their routes to the same app (`create_app`).
"""
