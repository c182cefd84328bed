"""The log scrubber: finds the sensitive spans of each line and replaces them by markers.

Matching is Aho-Corasick (``ahocorasick-rs``, over UTF-8 bytes: several times faster than
``pyahocorasick`` over ``str``), in two stages:

1. **Find the lines.** A block of many lines (see :meth:`LogScrubber.scrub_text`) is searched in
   one pass with a leftmost-longest automaton (a DFA while it stays small) holding the spellings
   that do not start with another spelling, plus the words that every structural pattern needs
   (``Setting state of``, ``stream_state``, the cursor field names, ...). Leftmost-longest lets
   the library use its SIMD prefilter (up to 64 patterns); it reports non-overlapping matches
   only, but every occurrence of a pattern overlaps a reported match, so every line holding
   anything sensitive is found. Most lines hold nothing and are passed through untouched, without
   a single Python operation per line.
2. **Scrub a line.** On a line that was found, every occurrence of every spelling is taken,
   overlapping ones included, and the spans of the structural patterns are added. Leftmost-longest
   alone would not do here: after ``abcdxyz`` consumed the head of ``abcdxyz1234``, the tail of a
   second value ``xyz1234`` would survive. All spans are merged, so a value can never survive
   half-redacted because two rules disagreed about its edges. When spans of different kinds
   merge, the stronger kind names the marker (secret, then state, then cursor).

Lines are delimited by ``\\n``; no pattern contains a line break (a multi-line value is also
registered line by line), so nothing is ever matched across lines and a line's terminator is never
touched.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice

import ahocorasick_rs

from purge.scrub.patterns import (
    _RAW_STATE,
    _STATE_KEY_HINT,
    _STATE_PREFIX,
    _STRUCTURE_TRIGGERS,
    _TO_STRING_CLASS,
    _build_pair_pattern,
    _is_json_number,
    _pair_value_spans,
    _state_blob_spans,
    _state_object_spans,
    _to_string_spans,
)
from purge.scrub.spans import RedactionKind, _merge, _Span
from purge.scrub.spellings import _NUMBER, _value_spellings

# A block scrubbed at once by ``scrub_chunks``, and the lines per batch of ``scrub_stream``: large
# enough that the per-call cost vanishes, small enough to keep memory bounded and the block in
# the CPU cache. Measured on the bench's 100 MB (1,000 values): 64 KiB to 1 MiB blocks are equally
# fast, 4 MiB ~15% slower; batches of 1,000 to 8,000 lines equal, 32,000 ~20% slower.
_BLOCK_CHARS = 1 << 20
_BATCH_LINES = 4096

# The block search runs as a DFA up to this many bytes of detectors (about 1,500 values in all
# their spellings): a third faster than an NFA, but ~250 bytes of memory per detector byte, so
# about 120 MB at the limit. Beyond it, a contiguous NFA, a few MB whatever the number of values.
_DFA_MAX_PATTERN_BYTES = 512 * 1024

_LINE_TERMINATORS = ("\r\n", "\n", "\r")
_DIGITS = frozenset("0123456789")
_ZONELESS_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}$")


class LogScrubber:
    """Replaces cursor values, secrets and printed state in log text by typed markers.

    Build one per sync run from that run's state and connector configuration (see
    :func:`state_leaf_values` and :func:`spec_secret_values`); it keeps running ``counts`` so the
    run's receipt can say how much was removed. Three ways in, all with the same result:
    :meth:`scrub_line` for one line, :meth:`scrub_text` for a block of lines, and the streaming
    :meth:`scrub_stream` (lines in, lines out) and :meth:`scrub_chunks` (text chunks in, scrubbed
    chunks out, the fastest). Not thread-safe: give each log its own scrubber or serialise calls.

    ``keep`` names the metadata Sluice keeps: stream names, namespaces, cursor field names,
    primary key field names (the ``cursor_fields`` are always kept as well). A cursor value equal
    to one of them is not looked for in free text, so ``Read 100 records from users`` keeps
    ``users`` even when some state holds the string ``users``. The trade-off: a cursor whose value
    really is ``users`` then stays readable in free text too (it is still removed inside printed
    state blobs and as the value of a cursor-field pair), since a name that appears in every line
    about its stream cannot be told apart from the same word used as a cursor. Secrets are never
    kept, whatever ``keep`` says.
    """

    def __init__(
        self,
        *,
        cursor_values: Iterable[str],
        secrets: Iterable[str],
        cursor_fields: Iterable[str] = (),
        keep: Iterable[str] = (),
    ) -> None:
        self._counts: dict[str, int] = {kind.value: 0 for kind in RedactionKind}
        cursor_fields = [f for f in cursor_fields if f]
        kept = frozenset(name for name in (*keep, *cursor_fields) if name)
        kinds: dict[str, RedactionKind] = {}
        for value in cursor_values:
            if value in kept:
                continue
            for spelling in _value_spellings(value, cursor=True):
                if spelling not in kept:
                    kinds[spelling] = RedactionKind.CURSOR
        for secret in secrets:
            for spelling in _value_spellings(secret, cursor=False):
                kinds[spelling] = RedactionKind.SECRET  # a secret outranks a cursor value
        encoded = [spelling.encode("utf-8", "surrogatepass") for spelling in kinds]
        self._kinds = list(kinds.values())
        # A number is only that number where no digit continues it: epoch seconds ``1714551630``
        # are not a rendering of the instant inside the milliseconds ``1714551630897`` of another
        # one, and cutting a number in two would also break the JSON it sits in.
        self._numeric = [_NUMBER.fullmatch(spelling) is not None for spelling in kinds]
        # Likewise a cursor timestamp rendered to the second without a zone is not that instant
        # where a fraction continues it: ``07:47:03`` is not ``07:47:03.715``, the time stamp
        # of a log line written in the same second (source-faker's cursor is "now"). Renderings
        # with a fraction are registered on their own. Secrets are always taken.
        self._digit_ended = [
            kind is RedactionKind.CURSOR and _ZONELESS_SECONDS.search(spelling) is not None
            for spelling, kind in kinds.items()
        ]
        # Overlapping search on the lines that have something: every occurrence, see module doc.
        self._line_automaton = (
            ahocorasick_rs.BytesAhoCorasick(
                encoded, implementation=ahocorasick_rs.Implementation.ContiguousNFA
            )
            if encoded
            else None
        )
        fields = sorted(set(cursor_fields), key=len, reverse=True)
        self._pair_pattern = _build_pair_pattern(fields) if fields else None
        self._fields = tuple(fields)
        # The block search only has to find the lines, not every spelling: a spelling that
        # starts with another one finds no line that the shorter one misses (``...58`` finds
        # every ``...58.000Z``, ``...58+00:00``), and a smaller automaton is a faster one.
        detectors = _prefix_minimal([*encoded, *(w.encode() for w in _STRUCTURE_TRIGGERS)])
        detectors.extend(field.encode("utf-8", "surrogatepass") for field in fields)
        self._block_automaton = ahocorasick_rs.BytesAhoCorasick(
            detectors,
            matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
            implementation=(
                ahocorasick_rs.Implementation.DFA
                if sum(map(len, detectors)) <= _DFA_MAX_PATTERN_BYTES
                else ahocorasick_rs.Implementation.ContiguousNFA
            ),
        )

    @property
    def counts(self) -> dict[str, int]:
        """Redactions so far by kind; all three kinds are always present."""
        return dict(self._counts)

    @property
    def pattern_count(self) -> int:
        """How many spellings of the cursor values and secrets are looked for."""
        return len(self._kinds)

    def scrub_line(self, line: str) -> str:
        """Return ``line`` with every sensitive span replaced; its terminator is kept as is."""
        content, terminator = _split_terminator(line)
        spans = self._spans(content)
        if not spans:
            return line
        pieces: list[str] = []
        position = 0
        for span in _merge(spans):
            pieces.append(content[position : span.start])
            pieces.append(f'"{span.kind.marker}"' if span.quoted else span.kind.marker)
            self._counts[span.kind.value] += 1
            position = span.end
        pieces.append(content[position:])
        pieces.append(terminator)
        return "".join(pieces)

    def scrub_text(self, text: str) -> str:
        """Return ``text``, a block of ``\\n``-terminated lines, scrubbed line by line.

        The same result as :meth:`scrub_line` on each line, at the speed of one automaton pass
        over the block: only the lines in which that pass finds something are looked at again.
        ``text`` is returned itself when nothing was found. A line cut in two by the end of the
        block is scrubbed as two lines, so feed whole lines (as :meth:`scrub_chunks` does).
        """
        if not text:
            return text
        data = text.encode("utf-8", "surrogatepass")
        hits = self._block_automaton.find_matches_as_indexes(data)
        if not hits:
            return text
        if len(data) == len(text):  # one byte per character: byte offsets are str offsets
            parts: list[str] = []
            position = 0
            for _, start, _end in hits:
                if start < position:
                    continue  # another hit on a line already scrubbed
                line_start = text.rfind("\n", 0, start) + 1
                line_end = text.find("\n", start) + 1 or len(text)
                parts.append(text[position:line_start])
                parts.append(self.scrub_line(text[line_start:line_end]))
                position = line_end
            parts.append(text[position:])
            return "".join(parts)
        pieces: list[bytes] = []
        position = 0
        for _, start, _end in hits:
            if start < position:
                continue
            line_start = data.rfind(b"\n", 0, start) + 1
            line_end = data.find(b"\n", start) + 1 or len(data)
            pieces.append(data[position:line_start])
            line = data[line_start:line_end].decode("utf-8", "surrogatepass")
            pieces.append(self.scrub_line(line).encode("utf-8", "surrogatepass"))
            position = line_end
        pieces.append(data[position:])
        return b"".join(pieces).decode("utf-8", "surrogatepass")

    def scrub_chunks(self, chunks: Iterable[str]) -> Iterator[str]:
        """Scrub text arriving in chunks of any size (``file.read(n)``), in bounded memory.

        Chunks are gathered into blocks of at least 1 MiB cut after a line break and scrubbed with
        :meth:`scrub_text`; the concatenation of what is yielded is the scrubbed text. Memory is
        one block plus the longest line.
        """
        pending: list[str] = []
        size = 0
        threshold = _BLOCK_CHARS
        for chunk in chunks:
            if not chunk:
                continue
            pending.append(chunk)
            size += len(chunk)
            if size < threshold:
                continue
            text = "".join(pending)
            cut = text.rfind("\n") + 1
            if not cut:  # one line longer than a block: wait for its end, without re-joining often
                pending = [text]
                threshold = 2 * size
                continue
            yield self.scrub_text(text[:cut])
            rest = text[cut:]
            pending = [rest] if rest else []
            size = len(rest)
            threshold = _BLOCK_CHARS
        if pending:
            yield self.scrub_text("".join(pending))

    def scrub_stream(self, lines: Iterable[str]) -> Iterator[str]:
        """Scrub an iterable of lines, yielding one scrubbed line per line, in bounded memory.

        Lines are read ahead in batches of a few thousand, each searched in one pass like
        :meth:`scrub_text`; lines without a hit are yielded as they came. Each line is scrubbed on
        its own (as :meth:`scrub_line` would), whatever its terminator.
        """
        iterator = iter(lines)
        while batch := list(islice(iterator, _BATCH_LINES)):
            yield from self._scrub_batch(batch)

    def _scrub_batch(self, batch: list[str]) -> list[str]:
        text = "".join(batch)
        data = text.encode("utf-8", "surrogatepass")
        hits = self._block_automaton.find_matches_as_indexes(data)
        if not hits:
            return batch
        if len(data) == len(text):
            ends = list(accumulate(map(len, batch)))
        else:
            ends = list(accumulate(len(line.encode("utf-8", "surrogatepass")) for line in batch))
        done = -1
        for _, start, _end in hits:
            index = bisect_right(ends, start)
            if index != done:
                batch[index] = self.scrub_line(batch[index])
                done = index
        return batch

    def _spans(self, content: str) -> list[_Span]:
        """Every sensitive span of one line's content, unmerged."""
        spans: list[_Span] = []
        if _STATE_PREFIX in content or _RAW_STATE in content:
            spans.extend(_state_blob_spans(content))
        if _TO_STRING_CLASS in content:
            spans.extend(_to_string_spans(content))
        if _STATE_KEY_HINT.search(content):
            spans.extend(_state_object_spans(content))
        if self._pair_pattern is not None:
            spans.extend(_pair_value_spans(self._pair_pattern, self._fields, content))
        if self._line_automaton is not None:
            data = content.encode("utf-8", "surrogatepass")
            matches = self._line_automaton.find_matches_as_indexes(data, overlapping=True)
            if matches and len(data) != len(content):
                # Byte offsets to str offsets; only lines with non-ASCII text and a hit pay this.
                def chars(offset: int) -> int:
                    return len(data[:offset].decode("utf-8", "surrogatepass"))

                matches = [(index, chars(start), chars(end)) for index, start, end in matches]
            kinds, numeric, digit_ended = self._kinds, self._numeric, self._digit_ended
            for index, start, end in matches:
                if not numeric[index]:
                    if digit_ended[index] and _continues_number(content, end):
                        continue
                    spans.append(_Span(start, end, kinds[index]))
                elif not (
                    (start > 0 and content[start - 1] in _DIGITS)
                    or (end < len(content) and content[end] in _DIGITS)
                ):
                    quoted = _is_json_number(content, start, end)
                    spans.append(_Span(start, end, kinds[index], quoted))
        return spans


def _continues_number(content: str, end: int) -> bool:
    """Whether digits, or a decimal point and digits, follow position `end`."""
    following = content[end : end + 2]
    return following[:1] in _DIGITS or (following[:1] in (".", ",") and following[1:2] in _DIGITS)


def _prefix_minimal(patterns: list[bytes]) -> list[bytes]:
    """The patterns that do not start with another pattern of the list.

    Sorted, a pattern's shortest prefix in the list comes right before the patterns that extend
    it (anything between them starts with it too), so one pass keeps what does not start with the
    last pattern kept.
    """
    kept: list[bytes] = []
    for pattern in sorted(set(patterns)):
        if not kept or not pattern.startswith(kept[-1]):
            kept.append(pattern)
    return kept


def _split_terminator(line: str) -> tuple[str, str]:
    """Split off the line terminator so no rule can ever consume or alter it."""
    for terminator in _LINE_TERMINATORS:
        if line.endswith(terminator):
            return line[: -len(terminator)], terminator
    return line, ""
