"""multipart/form-data bodies (file uploads) read and written with the standard library.

The gateway must both read an upload (to judge a batch file's lines) and forward it (possibly
rewritten), so it parses the exact bytes it received rather than a framework's form object.
"""

from __future__ import annotations

import uuid
from email.parser import BytesParser
from email.policy import HTTP


def parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], bytes | None, str]:
    """Form fields, the uploaded file's bytes (None: no file part) and its name.

    Raises ValueError when the body is not multipart/form-data with a boundary."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        raise ValueError("expected Content-Type multipart/form-data with a boundary")
    try:
        header = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
    except UnicodeEncodeError:
        raise ValueError("the Content-Type header is not Latin-1") from None
    message = BytesParser(policy=HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise ValueError("no parts found")
    fields: dict[str, str] = {}
    data, name = None, "upload.jsonl"
    for part in message.iter_parts():
        field_name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True) or b""
        if filename is not None or field_name == "file":
            data, name = payload, filename or name
        elif field_name:
            fields[str(field_name)] = payload.decode("utf-8", "replace")
    return fields, data, name


def build_multipart(fields: dict[str, str], data: bytes, filename: str) -> tuple[bytes, str]:
    """A multipart/form-data body with these fields and one file part; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode()
                     + value.encode("utf-8") + b"\r\n")
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
                 f"Content-Type: application/jsonl\r\n\r\n".encode("utf-8") + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
