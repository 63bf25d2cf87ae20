"""The engine's HTTP/1.1 parser: uvicorn's httptools protocol (llhttp, in C: about a tenth of the engine's
CPU per request less than h11), with the bound on a request's head that h11 had and llhttp has not.

A request line and headers longer than ``MAX_HEAD_BYTES`` get a 431 and the connection is closed, so a
client cannot grow the engine's memory with an endless header; bodies are bounded by the gate.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # of the head being read, over the chunks that did not complete one
        self._in_head = True
        self._heads_completed = 0  # in the chunk being parsed

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # what comes next on this connection is the next head

    def on_headers_complete(self) -> None:
        self._heads_completed += 1
        self._in_head, self._head_bytes = False, 0
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        self._heads_completed = 0
        super().data_received(data)
        if self._in_head and not self._heads_completed and not self.transport.is_closing():
            self._head_bytes += len(data)  # all of this chunk went into a head still incomplete
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()

    def _refuse_head(self) -> None:
        message = f"request line and headers exceed {MAX_HEAD_BYTES} bytes".encode()
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(message)).encode() + b"\r\n", b"connection: close\r\n\r\n", message]))
        self.transport.close()
