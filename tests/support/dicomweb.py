"""DICOMweb test helpers: multipart bodies built by hand (so tests control every byte), raw
HTTP over sockets for hostile clients, and the router's dicomweb endpoint in TOML."""

from __future__ import annotations

import http.client
import json
import socket
import uuid
from pathlib import Path

BOUNDARY = "dicom-router-test-boundary"


def dicomweb_endpoint_toml(name: str, port: int, extra: str = "") -> str:
    return f'\n[endpoints.{name}]\ntype = "dicomweb"\nbind = "127.0.0.1"\nport = {port}\n{extra}\n'


def multipart_related(
    parts: list[bytes | Path], boundary: str = BOUNDARY, part_type: str = "application/dicom"
) -> bytes:
    body = bytearray()
    for part in parts:
        data = Path(part).read_bytes() if isinstance(part, Path) else part
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body)


def stow_content_type(boundary: str = BOUNDARY) -> str:
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(
    port: int, path: str, body: bytes, content_type: str, headers: dict | None = None, timeout: float = 60
) -> tuple[int, dict, bytes]:
    """POST over a fresh connection; (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": content_type, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get(port: int, path: str, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def stow_uids(body: bytes) -> tuple[list[str], dict[str, int]]:
    """The stored SOP Instance UIDs and the failed ones with their FailureReason, from a STOW-RS answer."""
    answer = json.loads(body)
    stored = [item["00081155"]["Value"][0] for item in answer.get("00081199", {}).get("Value", [])]
    failed = {
        (item["00081155"].get("Value") or [""])[0]: item["00081197"]["Value"][0]
        for item in answer.get("00081198", {}).get("Value", [])
    }
    return stored, failed


def raw_connection(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    """A TCP connection from ``source`` (any 127.0.0.0/8 address is this machine)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True when the other end closes (or resets) the connection within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def request_head(path: str, content_type: str, length: int | None = None, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
    head += f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (head + extra + "\r\n").encode()


def unique() -> str:
    return uuid.uuid4().hex


def multipart_parts(body: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: (headers, content) each."""
    boundary = content_type.split("boundary=")[1].split(";")[0].strip().strip('"')
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.strip().split(b"\r\n"):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content[:-2] if content.endswith(b"\r\n") else content))
    return parts
