"""Prefix affinity: which replica of a model likely holds a request's prompt prefix in its KV cache.

vLLM's automatic prefix caching keeps the KV blocks of prompts it served; a request whose
prompt starts with the same blocks skips their prefill, but only on the replica that holds
them. So requests that share a prefix (a system prompt, the earlier turns of a conversation)
should go to one replica, without piling every conversation onto one of them:

* the prompt (chat messages rendered in order, or the completion prompt) is cut into blocks of
  ``block_chars`` characters; each full block gets the hash of the whole prompt up to its end
  (:func:`prefix_hashes`), so two prompts share block hashes exactly as long as they share text;
* the replica comes from rendezvous (highest random weight) hashing of the first block's hash
  over the replicas (:func:`rendezvous_order`). The weight is a keyed BLAKE2b of the hash and
  the replica's id, the same in every process and on every host, so all router workers and all
  routers pick the same replica for a prefix with no shared state; removing a replica moves only
  the prefixes it was first for;
* each worker also remembers, in a bounded LRU (:class:`PrefixIndex`), the replica it sent a
  prompt's longest prefix to; a later prompt that extends it (the next turn) goes there, which
  matters once the bound below sent a conversation away from its rendezvous replica;
* bounded load (consistent hashing with bounded loads): a replica whose load would exceed
  ``ceil(load_factor * average)`` is passed over for the next in rendezvous order.

A session header (``prefix_routing.session_header``) is the simpler option: its value is hashed
the same way and replaces the prompt's blocks, so a client that names its conversation gets one
replica for it.
"""

from __future__ import annotations

import hashlib
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


def prefix_hashes(text: str, block_chars: int, max_blocks: int) -> tuple[bytes, ...]:
    """The hash of the text up to the end of each full block, shortest prefix first.

    One running BLAKE2b fed block by block (O(len(text))); a partial last block has no hash,
    as vLLM caches only full blocks. At most ``max_blocks`` blocks are hashed.
    """
    hasher = hashlib.blake2b(digest_size=_DIGEST)
    hashes = []
    end = min(len(text) // block_chars, max_blocks) * block_chars
    for start in range(0, end, block_chars):
        hasher.update(text[start : start + block_chars].encode("utf-8", "surrogatepass"))
        hashes.append(hasher.copy().digest())
    return tuple(hashes)


def session_hash(session: str) -> bytes:
    """A session header's value as one prefix hash (in a namespace of its own)."""
    return hashlib.blake2b(
        session.encode("utf-8", "surrogatepass"), digest_size=_DIGEST, person=b"hxp-session"
    ).digest()


def replica_key(replica_id: str) -> bytes:
    """The BLAKE2b key that makes a replica's rendezvous weights its own (computed once)."""
    return hashlib.blake2b(replica_id.encode(), digest_size=32).digest()


def rendezvous_order(prefix: bytes, replicas: Sequence[tuple[bytes, Any]]) -> list[Any]:
    """``replicas`` (key, value) ordered by their weight for ``prefix``, highest first."""
    weighted = sorted(
        (
            (hashlib.blake2b(prefix, digest_size=_DIGEST, key=key).digest(), value)
            for key, value in replicas
        ),
        key=lambda item: item[0],
        reverse=True,
    )
    return [value for _, value in weighted]


def load_bound(loads: Sequence[float], load_factor: float) -> float:
    """The most load a replica may have after taking one more request: the ceiling of
    ``load_factor`` times the average load with that request counted."""
    average = (sum(loads) + 1) / len(loads)
    return float(-(-load_factor * average // 1))


class PrefixIndex:
    """A bounded LRU of prefix hash -> the replica this worker sent that prefix to."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, str] = OrderedDict()

    def longest(self, hashes: Sequence[bytes]) -> str | None:
        """The replica of the longest of ``hashes`` this index knows (a lookup per block at
        most, from the longest down)."""
        entries = self._entries
        for prefix in reversed(hashes):
            replica = entries.get(prefix)
            if replica is not None:
                entries.move_to_end(prefix)
                return replica
        return None

    def record(self, hashes: Sequence[bytes], replica: str) -> None:
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
