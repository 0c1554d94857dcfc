"""MintError: one code table, and errors that survive crossing process boundaries."""

from __future__ import annotations

import pickle

import grpc

from mint.errors import GRPC_STATUS, Code, MintError


def test_every_code_maps_to_a_grpc_status_and_back():
    assert set(GRPC_STATUS) == set(Code)
    for code, status in GRPC_STATUS.items():
        error = MintError(code, "why")
        assert error.grpc_status is status


def test_errors_pickle_with_their_code_and_message():
    error = pickle.loads(pickle.dumps(MintError(Code.NOT_FOUND, "policy acme/x not found")))
    assert (error.code, error.message) == (Code.NOT_FOUND, "policy acme/x not found")


def test_from_rpc_error_keeps_the_status():
    class Failed(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self):
            return "too big"

    error = MintError.from_rpc_error(Failed())
    assert (error.code, error.message) == (Code.RESOURCE_EXHAUSTED, "too big")
