"""Credentials never leave the process: one place that strips them from URLs and messages.

A URL's user info (``user:token@``), query (``?token=...``) and fragment can carry secrets.
:func:`redact_url` drops them, giving a URL that still names the same place (credentials
belong in the environment: ``HF_TOKEN``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``);
lockfiles, cards and the cache record it. :func:`redact_text` masks them inside free text
(error messages, logs) with ``***`` so a reader still sees that something was there.

Example:
    >>> redact_url("s3://key:secret@bucket/reg?token=x")
    's3://bucket/reg'
    >>> redact_text("cannot open 'hf://user:tok@org/x?token=abc' now")
    "cannot open 'hf://***@org/x?***' now"
"""

from __future__ import annotations

import re

# scheme://[userinfo@]rest: userinfo is everything before the last '@' of the authority.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s'\"<>@]*@)")
# A query or fragment right after a URL's path, up to whitespace or a quote.
_QUERY = re.compile(r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*:/[^\s'\"<>?#]*)[?#][^\s'\"<>]*")


def url_has_secret_parts(url: str) -> bool:
    """Whether ``url`` carries user info, a query or a fragment (the places secrets hide).

    Example:
        >>> url_has_secret_parts("file:///srv/reg"), url_has_secret_parts("memory://u:p@x")
        (False, True)
    """
    if "://" not in url:
        return False
    authority = url.split("://", 1)[1].split("/", 1)[0]
    return "@" in authority or "?" in url or "#" in url


def redact_url(url: str) -> str:
    """``url`` without user info, query and fragment (a trailing ``/`` dropped too).

    Example:
        >>> redact_url("hf://datasets/org/dicts@dev"), redact_url("memory://u:p@box")
        ('hf://datasets/org/dicts@dev', 'memory://box')
    """
    if "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    authority, slash, path = rest.partition("/")
    if "@" in authority:  # hf://org/name@branch keeps its '@': it is in the path, not the authority
        authority = authority.rpartition("@")[2]
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    authority = re.split(r"[?#]", authority, maxsplit=1)[0]
    return f"{scheme}://{authority}{slash}{path}".rstrip("/") if (authority or path) else f"{scheme}://"


def redact_text(text: str) -> str:
    """``text`` with every URL's user info and query masked as ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _QUERY.sub(lambda m: f"{m['url']}?***", text)


__all__ = ["redact_text", "redact_url", "url_has_secret_parts"]
