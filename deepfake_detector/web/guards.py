"""Guards that keep the web server answering under slow or hostile clients.

Two layers:

* the connection (:func:`http_protocol`, a subclass of uvicorn's h11 protocol passed as
  ``uvicorn.Config(http=...)``): a connection whose request headers are not complete within
  ``request_timeout`` seconds (counted from the connection's start, or from the end of the
  previous response on a kept-alive connection) is closed -- uvicorn has no header timeout of
  its own, and a slowloris client that sends a byte now and then would otherwise hold it
  forever; a request body the application is waiting for that receives no byte for
  ``body_timeout`` seconds is cut off (a backstop for every route, the UI's uploads included);
  past ``max_connections`` open connections a new one is answered 503 and closed at once, so
  the process keeps file descriptors to spare;
* the upload route (:class:`UploadSlots`, and the timeouts :func:`..uploads.receive_file`
  takes): at most ``max_uploads`` ``/api/predict`` requests at a time (the next ones get 503
  with ``Retry-After`` before their body is read), and an upload that stalls for
  ``upload_timeout`` seconds or is not finished within ``upload_deadline`` seconds gets 408.

Written against uvicorn 0.54 (``uvicorn.protocols.http.h11_impl.H11Protocol``); the hooks used
(``connection_made``, ``data_received``, ``on_response_complete``, ``connection_lost``,
``send_400_response``, ``cycle``, ``conn``, ``flow``, ``connections``) exist since uvicorn 0.30.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

# defaults for a small machine (2 cores, 24 GB)
DEFAULT_REQUEST_TIMEOUT = 10.0  # s for a request's headers to arrive
DEFAULT_KEEP_ALIVE = 5.0  # s an idle kept-alive connection stays open
DEFAULT_UPLOAD_TIMEOUT = 15.0  # s without a byte before an upload is cut off (408)
DEFAULT_UPLOAD_DEADLINE = 120.0  # s for a whole upload (408)
DEFAULT_MAX_UPLOADS = 8  # /api/predict requests at a time (503 above)
DEFAULT_MAX_CONNECTIONS = 256  # open connections (503 and closed above)
BODY_TIMEOUT_GRACE = 5.0  # the connection's body backstop: upload_timeout + this
RETRY_AFTER_S = 5


def check_positive(**values) -> None:
    for name, v in values.items():
        if v is None or not v > 0:
            raise ValueError(f"{name} must be > 0, got {v}")


def raw_json_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response (``Connection: close``) with ``{"error": message}``, for
    answering below the application (no request parsed, or a malformed one)."""
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body


class UploadSlots:
    """A non-blocking counter of uploads in progress: :meth:`try_acquire` is False when all
    ``n`` are taken (answer 503 then, do not wait). Used from the event loop only."""

    def __init__(self, n: int):
        check_positive(max_uploads=n)
        self.n = int(n)
        self.active = 0

    def try_acquire(self) -> bool:
        if self.active >= self.n:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active = max(0, self.active - 1)


def http_protocol(request_timeout: float = DEFAULT_REQUEST_TIMEOUT, body_timeout: float | None = None,
                  max_connections: int = DEFAULT_MAX_CONNECTIONS):
    """An ``asyncio.Protocol`` class for ``uvicorn.Config(http=...)``: uvicorn's h11 protocol
    with a header timeout, a request-body idle timeout and a cap on open connections.

    ``body_timeout``: default ``DEFAULT_UPLOAD_TIMEOUT + BODY_TIMEOUT_GRACE``. The body timer
    only counts while uvicorn is reading (not while it paused reading because the
    application has not consumed what came), so a slow application is not mistaken for a
    slow client.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body_timeout = DEFAULT_UPLOAD_TIMEOUT + BODY_TIMEOUT_GRACE if body_timeout is None else body_timeout
    check_positive(request_timeout=request_timeout, body_timeout=body_timeout, max_connections=max_connections)

    class GuardedH11Protocol(H11Protocol):
        """uvicorn's h11 protocol with a header timeout, a body idle timeout and a connection cap."""

        _header_timer = None
        _body_timer = None
        _last_data = 0.0
        _bytes_waiting = False  # part of a request came while waiting for its headers

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning("%d connections open: refusing a new one", len(self.connections))
                transport.write(raw_json_response(503, "Service Unavailable", "too many connections; retry later",
                                                  f"retry-after: {RETRY_AFTER_S}\r\n"))
                transport.close()
                return
            self._update_timers()

        def data_received(self, data: bytes) -> None:
            self._last_data = self.loop.time()
            if self._header_timer is not None and data:
                self._bytes_waiting = True
            super().data_received(data)
            self._update_timers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._update_timers()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            self._cancel_body_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:  # uvicorn's is text/plain
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.write(raw_json_response(400, "Bad Request", msg))
            self.transport.close()

        # --- the timers
        def _update_timers(self) -> None:
            t = self.transport
            if t is None or t.is_closing() or t.get_protocol() is not self:  # closed, or upgraded to a websocket
                self._cancel_header_timer()
                self._cancel_body_timer()
                return
            at_app = self.cycle is not None and not self.cycle.response_complete
            if not at_app:  # waiting for the next request's headers
                self._cancel_body_timer()
                if self._header_timer is None:
                    self._bytes_waiting = False
                    self._header_timer = self.loop.call_later(request_timeout, self._on_header_timeout)
                return
            self._cancel_header_timer()
            if self.conn.their_state is h11.SEND_BODY:
                if self._body_timer is None:
                    self._last_data = self.loop.time()
                    self._body_timer = self.loop.call_later(body_timeout, self._on_body_timeout)
            else:
                self._cancel_body_timer()

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _on_header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing():
                return
            if self._bytes_waiting:  # a request was started: say why it ends (an idle one just closes)
                self.transport.write(raw_json_response(
                    408, "Request Timeout", f"request headers not received within {request_timeout:g} s"))
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()

        def _on_body_timeout(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
                return
            if self.flow.read_paused:  # we are not reading (the application is behind): not the client's fault
                self._last_data = self.loop.time()
            left = self._last_data + body_timeout - self.loop.time()
            if left > 0:  # bytes came since the timer was set
                self._body_timer = self.loop.call_later(left, self._on_body_timeout)
                return
            log.warning("closing a connection whose request body stalled for %g s", body_timeout)
            if self.cycle is not None and not self.cycle.response_started:
                self.cycle.disconnected = True  # the application's answer, if any, is not sent after ours
                self.transport.write(raw_json_response(
                    408, "Request Timeout", f"request body stalled: no data for {body_timeout:g} s"))
            self.transport.close()

    GuardedH11Protocol.request_timeout = request_timeout
    GuardedH11Protocol.body_timeout = body_timeout
    GuardedH11Protocol.max_connections = max_connections
    return GuardedH11Protocol


__all__ = ["DEFAULT_KEEP_ALIVE", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_UPLOADS", "DEFAULT_REQUEST_TIMEOUT",
           "DEFAULT_UPLOAD_DEADLINE", "DEFAULT_UPLOAD_TIMEOUT", "UploadSlots", "http_protocol"]
