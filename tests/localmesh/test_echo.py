"""The echo app's WebSocket framing (the client side of the tests uses the same functions)."""

from __future__ import annotations

import io

from localmesh import echo


def test_frames_round_trip_masked_and_not():
    for payload in (b"", b"hello", b"x" * 200, b"y" * 70000):
        for mask in (False, True):
            opcode, data = echo.read_frame(io.BytesIO(echo.frame(0x1, payload, mask=mask)))
            assert (opcode, data) == (0x1, payload)


def test_accept_key_is_rfc6455():
    assert echo.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
