"""Prefix affinity: which replica of a model likely holds a request's prompt prefix in its KV cache.

vLLM's automatic prefix caching keeps the KV blocks of prompts it served; a request whose
prompt starts with the same blocks skips their prefill, but only on the replica that holds
them. So requests that share a prefix (a system prompt, the earlier turns of a conversation)
should go to one replica, without piling every conversation onto one of them:

* the prompt (chat messages rendered in order, or the completion prompt) is cut into blocks of
  ``block_chars`` characters (UTF-8 bytes); each full block gets the hash of the whole prompt
  up to its end (:func:`prefix_hashes`), so two prompts share block hashes exactly as long as
  they share text;
* the replica comes from rendezvous (highest random weight) hashing of the first block's hash
  over the replicas (:func:`rendezvous_order`). The weight is a keyed BLAKE2b of the hash and
  the replica's id, the same in every process and on every host, so all router workers and all
  routers pick the same replica for a prefix with no shared state; removing a replica moves only
  the prefixes it was first for;
* each worker also remembers, in a bounded LRU (:class:`PrefixIndex`), the replica it sent a
  prompt's longest prefix to; a later prompt that extends it (the next turn) goes there, which
  matters once the bound below sent a conversation away from its rendezvous replica;
* bounded load (consistent hashing with bounded loads): a replica whose load (in-flight
  requests plus vLLM's running and waiting ones) exceeds ``ceil(load_factor * average)`` is
  passed over for the next in rendezvous order.

A session header (``prefix_routing.session_header``) is the simpler option: its value is hashed
the same way and replaces the prompt's blocks, so a client that names its conversation gets one
replica for it.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

# Rendezvous weights are compared as 8-byte strings: BLAKE2b output is uniform, so byte order
# is as good as integer order and needs no conversion.
_DIGEST = 8


def render_chat(messages: Any) -> str:
    """Chat messages in order, one role and content each: an append-only rendering, so the
    rendering of a conversation is a prefix of the rendering of its next turn."""
    if not isinstance(messages, list):
        return ""
    parts = []
    for message in messages:
        if isinstance(message, dict):
            role = message.get("role")
            parts.append(f"{role if isinstance(role, str) else ''}\x1e{_content(message)}\x1f")
    return "".join(parts)


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\x1d".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def prompt_text(chat: bool, payload: dict[str, Any]) -> str:
    """What a backend's prefix cache sees first: the chat messages, or the completion prompt."""
    if chat:
        return render_chat(payload.get("messages"))
    prompt = payload.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch: its first prompt decides
    return prompt if isinstance(prompt, str) else ""


def prefix_hashes(text: str, block_chars: int, max_blocks: int) -> tuple[int, ...]:
    """The hash of the text up to the end of each full block, shortest prefix first.

    Blocks are ``block_chars`` bytes of the UTF-8 text (a character each in ASCII). The hash
    is a CRC-32 carried from block to block, so each block costs one C call on its own bytes:
    O(len(text)), about a microsecond a block in the router's budget where a cryptographic
    hash per block cost three. A collision only sends a request to another replica than its
    prefix's (the answer is the same, without the cache hit). A partial last block has no hash,
    as vLLM caches only full blocks; at most ``max_blocks`` blocks are hashed, so a longer
    conversation keeps the hashes of its first ``max_blocks`` and with them its replica.
    """
    data = text[: block_chars * max_blocks].encode("utf-8", "surrogatepass")
    crc = 0
    hashes = []
    for start in range(0, min(len(data) // block_chars, max_blocks) * block_chars, block_chars):
        crc = zlib.crc32(data[start : start + block_chars], crc)
        hashes.append(crc)
    return tuple(hashes)


def session_hash(session: str) -> int:
    """A session header's value as a prefix hash: 64 bits, apart from the CRCs' 32."""
    digest = hashlib.blake2b(
        session.encode("utf-8", "surrogatepass"), digest_size=8, person=b"hxp-session"
    ).digest()
    return int.from_bytes(digest) | 1 << 64


def replica_key(replica_id: str) -> bytes:
    """The BLAKE2b key that makes a replica's rendezvous weights its own (computed once)."""
    return hashlib.blake2b(replica_id.encode(), digest_size=32).digest()


def rendezvous_order(prefix: int, replicas: Sequence[tuple[bytes, Any]]) -> list[Any]:
    """``replicas`` (key, value) ordered by their weight for ``prefix``, highest first."""
    message = prefix.to_bytes(9)
    weighted = sorted(
        (
            (hashlib.blake2b(message, digest_size=_DIGEST, key=key).digest(), value)
            for key, value in replicas
        ),
        key=lambda item: item[0],
        reverse=True,
    )
    return [value for _, value in weighted]


def load_bound(loads: Sequence[float], load_factor: float) -> float:
    """The most load a replica may have and still take a request: the ceiling of
    ``load_factor`` times the average load. A replica passes it by one request at most; the
    bound counts what the replicas hold now, so that two requests on a replica do not count
    as an overload (a vLLM server batches many)."""
    return float(-(-load_factor * sum(loads) / len(loads) // 1))


class PrefixIndex:
    """A bounded LRU of prefix hash -> the replica this worker sent that prefix to."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[int, str] = OrderedDict()

    def longest(self, hashes: Sequence[int]) -> str | None:
        """The replica of the longest of ``hashes`` this index knows (a lookup per block at
        most, from the longest down)."""
        entries = self._entries
        for prefix in reversed(hashes):
            replica = entries.get(prefix)
            if replica is not None:
                entries.move_to_end(prefix)
                return replica
        return None

    def record(self, hashes: Sequence[int], replica: str) -> None:
        """Remember the longest prefix only: a next turn's prompt contains it, at the same
        block, so one entry per request finds it again."""
        if not hashes or self.size == 0:
            return
        entries = self._entries
        entries[hashes[-1]] = replica
        entries.move_to_end(hashes[-1])
        if len(entries) > self.size:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
