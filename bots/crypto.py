"""Encryption at rest of exchange API credentials (Fernet, keys apart from ``SECRET_KEY``).

``settings.TRADEAPP_FERNET_KEYS`` lists the keys, newest first: the first encrypts, all decrypt
(``MultiFernet``), so a key is rotated by putting a new one in front, running
``rotate_token`` over the stored values (``ExchangeAccount.rotate_credentials``) and then
dropping the old key.
"""

from __future__ import annotations

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

__all__ = ["InvalidToken", "decrypt", "encrypt", "rotate_token"]


@functools.cache
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    if not keys:
        raise ImproperlyConfigured("TRADEAPP_FERNET_KEYS is empty: credentials cannot be stored")
    try:
        return MultiFernet([Fernet(key.strip().encode()) for key in keys])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            "TRADEAPP_FERNET_KEYS must hold Fernet keys (32 url-safe base64-encoded bytes), "
            "comma-separated"
        ) from exc


def _current() -> MultiFernet:
    return _fernet(tuple(settings.TRADEAPP_FERNET_KEYS))


def encrypt(plaintext: str) -> str:
    """The Fernet token of ``plaintext`` (ASCII text, safe for a text column)."""
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """The plaintext of a stored token; ``InvalidToken`` when no configured key opens it."""
    return _current().decrypt(token.encode()).decode()


def rotate_token(token: str) -> str:
    """The same plaintext re-encrypted with the first (newest) key."""
    return _current().rotate(token.encode()).decode()
