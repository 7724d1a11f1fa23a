"""CURVE keys for the zmq transport: `ffpipe keys DIR` makes them, channels load them.

One folder serves a whole pipeline: every receiver is a CURVE server holding
`server.key_secret`, every sender a CURVE client holding `client.key_secret`, and a
receiver accepts only peers that prove they hold the client secret. Copy the folder (or
just the files a host needs) to each host; the `*_secret` files are the credentials.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import zmq.auth

from pipeline.errors import UserError

ROLES = ("server", "client")
KEY_FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret")


class CurveKeys(NamedTuple):
    public: bytes       # our public key (z85)
    secret: bytes       # our secret key (z85)
    peer_public: bytes  # server: the only client key accepted; client: the server's key


def generate_keys(directory) -> list[Path]:
    """Create the server and client key pairs in `directory`; returns the files made."""
    if not zmq.has("curve"):
        raise UserError("this libzmq was built without CURVE; install a pyzmq wheel with it")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    made = []
    for name in ROLES:
        public, secret = zmq.auth.create_certificates(d, name)
        os.chmod(secret, 0o600)  # the secret file is the credential
        made += [Path(public), Path(secret)]
    return made


def load_curve(directory, role: str) -> CurveKeys:
    """Keys for a receiver (`role="server"`) or a sender (`role="client"`)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    d = Path(directory)
    missing = [f for f in KEY_FILES if not (d / f).is_file()]
    if missing:
        raise UserError(f"CURVE key files {', '.join(missing)} missing in {d}; "
                        f"run `ffpipe keys {d}` to make them")
    peer = "client" if role == "server" else "server"
    try:
        public, secret = zmq.auth.load_certificate(d / f"{role}.key_secret")
        peer_public, _ = zmq.auth.load_certificate(d / f"{peer}.key")
    except (ValueError, OSError) as exc:
        raise UserError(f"CURVE keys in {d} are unreadable ({exc}); "
                        f"run `ffpipe keys {d}` to make new ones") from None
    if not secret or not peer_public:
        raise UserError(f"CURVE keys in {d} are incomplete; run `ffpipe keys {d}` again")
    return CurveKeys(public, secret, peer_public)
