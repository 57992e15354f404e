"""A gateway's ext_proc filter built only from the official Envoy protos (PyPI xds-protos).

Runs in the wire interpreter (never with the project's generated code in the same process). It
drives whole ext_proc streams the way a gateway does and prints, as one JSON document, what the
client of each HTTP exchange would finally receive: status, headers, body, or the local reply.

Gateways emulated (``gateway`` of an exchange):

* ``envoy``: Envoy with the recipe's settings: request body BUFFERED, response body STREAMED,
  trailers skipped, ``protocol_config`` sent, ``allow_mode_override`` honoured (a response
  headers answer may switch the response body to NONE, BUFFERED or STREAMED);
* ``envoy-static``: the same, but overrides ignored (allow_mode_override false): every body is
  STREAMED;
* ``envoy-buffered``: response body BUFFERED, overrides ignored;
* ``agentgateway``: request body BUFFERED, response body FULL_DUPLEX_STREAMED (answers are
  ``streamed_response`` chunks, any number per chunk received).

The rules applied are Envoy's: a BUFFERED body answer may replace the body and, since response
headers were sent to the processor, must then set ``content-length`` to the new length, or the
exchange fails (500); STREAMED and FULL_DUPLEX_STREAMED drop ``content-length``; an answer of the
wrong type is a spurious message, which fails the exchange (500).

Usage: python ext_proc_client.py HOST:PORT < exchanges.json
"""

from __future__ import annotations

import base64
import json
import queue
import sys
from typing import Any

import grpc
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from google.protobuf import json_format

Mode = processing_mode_pb2.ProcessingMode
GATEWAYS = {
    # (request body mode, response body mode, honours mode_override)
    "envoy": (Mode.BUFFERED, Mode.STREAMED, True),
    "envoy-static": (Mode.BUFFERED, Mode.STREAMED, False),
    "envoy-buffered": (Mode.BUFFERED, Mode.BUFFERED, False),
    "agentgateway": (Mode.BUFFERED, Mode.FULL_DUPLEX_STREAMED, False),
}
_END = object()


class Failed(Exception):
    """The gateway gives up on the exchange (what Envoy does with failure_mode_allow false)."""


class Stream:
    """One Process stream, message by message."""

    def __init__(self, stub: Any) -> None:
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._answers = stub.Process(iter(self._outbox.get, _END), timeout=30)

    def send(self, message: Any) -> None:
        self._outbox.put(message)

    def receive(self) -> Any:
        try:
            return next(self._answers)
        except StopIteration:
            raise Failed("stream closed without an answer") from None
        except grpc.RpcError as err:
            raise Failed(f"stream failed: {err.code().name}") from None

    def close(self) -> list[Any]:
        """Half-close; whatever the processor still sends is returned (it should be nothing)."""
        self._outbox.put(_END)
        extra = []
        try:
            for answer in self._answers:
                extra.append(answer)
        except grpc.RpcError as err:
            extra.append(f"rpc error {err.code().name}")
        return extra


def header_map(pairs: list[list[str]]) -> Any:
    from envoy.config.core.v3 import base_pb2

    return base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k.lower(), raw_value=v.encode()) for k, v in pairs]
    )


def apply(headers: list[list[str]], mutation: Any) -> list[list[str]]:
    removed = {name.lower() for name in mutation.remove_headers}
    out = [h for h in headers if h[0] not in removed]
    for option in mutation.set_headers:
        key = option.header.key.lower()
        value = option.header.raw_value.decode() if option.header.raw_value else option.header.value
        action = option.append_action
        exists = any(h[0] == key for h in out)
        if action == 0:  # APPEND_IF_EXISTS_OR_ADD
            out.append([key, value])
        elif action == 1:  # ADD_IF_ABSENT
            if not exists:
                out.append([key, value])
        elif action == 3 and not exists:  # OVERWRITE_IF_EXISTS
            continue
        else:
            out = [h for h in out if h[0] != key] + [[key, value]]
    return out


def immediate(answer: Any) -> dict[str, Any]:
    reply = answer.immediate_response
    return {
        "status": reply.status.code,
        "headers": apply([], reply.headers),
        "body": base64.b64encode(reply.body).decode(),
        "details": reply.details,
    }


def chunks_of(exchange: dict[str, Any]) -> list[bytes]:
    body = b"".join(base64.b64decode(c) for c in exchange.get("response_chunks", []))
    cuts = exchange.get("cuts")
    if cuts is None:
        return [base64.b64decode(c) for c in exchange.get("response_chunks", [])]
    pieces, start = [], 0
    for cut in [*cuts, len(body)]:
        if cut > start:
            pieces.append(body[start:cut])
        start = max(start, cut)
    return pieces


def run(stub: Any, exchange: dict[str, Any]) -> dict[str, Any]:
    request_mode, response_mode, honours = GATEWAYS[exchange["gateway"]]
    stream = Stream(stub)
    result: dict[str, Any] = {"response_body_messages": 0, "overrides": []}
    try:
        outcome = drive(stream, exchange, request_mode, response_mode, honours, result)
        result.update(outcome)
    except Failed as failure:
        result["failed"] = str(failure)
    result["after_close"] = [str(x) for x in stream.close()]
    return result


def drive(
    stream: Stream,
    exchange: dict[str, Any],
    request_mode: int,
    response_mode: int,
    honours: bool,
    result: dict[str, Any],
) -> dict[str, Any]:
    body = base64.b64decode(exchange.get("request_body", ""))
    first = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=header_map(exchange["request_headers"]), end_of_stream=not body
        )
    )
    first.protocol_config.request_body_mode = request_mode
    first.protocol_config.response_body_mode = response_mode
    for key, value in (exchange.get("attributes") or {}).items():
        first.attributes["envoy.filters.http.ext_proc"].update({key: value})
    stream.send(first)
    answer = stream.receive()
    if answer.HasField("immediate_response"):
        return {"request_immediate": immediate(answer)}
    if not answer.HasField("request_headers"):
        raise Failed(f"spurious answer to request headers: {answer.WhichOneof('response')}")
    request_headers = apply(
        exchange["request_headers"], answer.request_headers.response.header_mutation
    )
    metadata = json_format.MessageToDict(answer.dynamic_metadata)
    if body:
        stream.send(pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=True)))
        answer = stream.receive()
        if answer.HasField("immediate_response"):
            return {"request_immediate": immediate(answer)}
        if not answer.HasField("request_body"):
            raise Failed(f"spurious answer to the request body: {answer.WhichOneof('response')}")
        common = answer.request_body.response
        request_headers = apply(request_headers, common.header_mutation)
        if common.body_mutation.WhichOneof("mutation"):
            raise Failed("the request body was changed")
        metadata = metadata or json_format.MessageToDict(answer.dynamic_metadata)
    out: dict[str, Any] = {"upstream_headers": request_headers, "metadata": metadata}

    chunks = chunks_of(exchange)
    headers = exchange["response_headers"]
    stream.send(
        pb.ProcessingRequest(
            response_headers=pb.HttpHeaders(headers=header_map(headers), end_of_stream=not chunks)
        )
    )
    answer = stream.receive()
    if answer.HasField("immediate_response"):
        out["response_immediate"] = immediate(answer)
        return out
    if not answer.HasField("response_headers"):
        raise Failed(f"spurious answer to response headers: {answer.WhichOneof('response')}")
    headers = apply(headers, answer.response_headers.response.header_mutation)
    if answer.HasField("mode_override"):
        result["overrides"].append(Mode.BodySendMode.Name(answer.mode_override.response_body_mode))
        if honours:
            response_mode = answer.mode_override.response_body_mode
    if not chunks or response_mode == Mode.NONE:
        new_body = b"".join(chunks)
    elif response_mode == Mode.BUFFERED:
        new_body, headers = buffered(stream, b"".join(chunks), headers, out, result)
    elif response_mode == Mode.STREAMED:
        headers = [h for h in headers if h[0] != "content-length"]
        new_body = streamed(stream, chunks, out, result)
    else:
        headers = [h for h in headers if h[0] != "content-length"]
        new_body = full_duplex(stream, chunks, out, result)
    out["status"] = next((v for k, v in headers if k == ":status"), "")
    out["headers"] = [h for h in headers if not h[0].startswith(":")]
    out["body"] = base64.b64encode(new_body).decode()
    return out


def buffered(
    stream: Stream,
    body: bytes,
    headers: list[list[str]],
    out: dict[str, Any],
    result: dict[str, Any],
) -> tuple[bytes, list[list[str]]]:
    result["response_body_messages"] += 1
    stream.send(pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=True)))
    answer = stream.receive()
    if answer.HasField("immediate_response"):
        out["response_immediate"] = immediate(answer)
        return b"", headers
    if not answer.HasField("response_body"):
        raise Failed(f"spurious answer to the response body: {answer.WhichOneof('response')}")
    common = answer.response_body.response
    headers = apply(headers, common.header_mutation)
    mutation = common.body_mutation
    kind = mutation.WhichOneof("mutation")
    if kind == "streamed_response":
        raise Failed("a streamed_response outside FULL_DUPLEX_STREAMED")
    if kind is None:
        return body, headers
    new = mutation.body if kind == "body" else b""
    length = next((v for k, v in headers if k == "content-length"), None)
    if length is not None and int(length) != len(new):
        raise Failed(f"content-length {length} does not match the mutated body ({len(new)})")
    return new, headers


def streamed(
    stream: Stream, chunks: list[bytes], out: dict[str, Any], result: dict[str, Any]
) -> bytes:
    sent = b""
    for index, chunk in enumerate(chunks):
        result["response_body_messages"] += 1
        last = index == len(chunks) - 1
        stream.send(pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=last)))
        answer = stream.receive()
        if answer.HasField("immediate_response"):
            # The response has started: Envoy resets it.
            out["response_reset"] = immediate(answer)
            return sent
        if not answer.HasField("response_body"):
            raise Failed(f"spurious answer to a response chunk: {answer.WhichOneof('response')}")
        mutation = answer.response_body.response.body_mutation
        kind = mutation.WhichOneof("mutation")
        if kind == "streamed_response":
            raise Failed("a streamed_response outside FULL_DUPLEX_STREAMED")
        sent += chunk if kind is None else (mutation.body if kind == "body" else b"")
    return sent


def full_duplex(
    stream: Stream, chunks: list[bytes], out: dict[str, Any], result: dict[str, Any]
) -> bytes:
    for index, chunk in enumerate(chunks):
        result["response_body_messages"] += 1
        last = index == len(chunks) - 1
        stream.send(pb.ProcessingRequest(response_body=pb.HttpBody(body=chunk, end_of_stream=last)))
    sent = b""
    while True:
        answer = stream.receive()
        if answer.HasField("immediate_response"):
            out["response_reset"] = immediate(answer)
            return sent
        if not answer.HasField("response_body"):
            raise Failed(f"spurious answer to a response chunk: {answer.WhichOneof('response')}")
        mutation = answer.response_body.response.body_mutation
        if mutation.WhichOneof("mutation") != "streamed_response":
            raise Failed("FULL_DUPLEX_STREAMED needs streamed_response answers")
        sent += mutation.streamed_response.body
        if mutation.streamed_response.end_of_stream:
            return sent


def main() -> None:
    target = sys.argv[1]
    exchanges = json.load(sys.stdin)
    channel = grpc.insecure_channel(target)
    stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
    results = {exchange["label"]: run(stub, exchange) for exchange in exchanges}
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
