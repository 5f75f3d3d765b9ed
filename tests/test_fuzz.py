"""Every parser a user or a peer can feed survives seeded random and mutated inputs.

Defect 6 of the security issue: mutated inputs reached the CLI as tracebacks — tag files with a
resolution of 2**63 or more (``OverflowError``) or deeply nested metadata (``RecursionError``),
PTU files with a resolution below ~5e-16 s (``ZeroDivisionError``) or of 1e300
(``OverflowError``). Here each parser gets 2,000 inputs (the in-memory ones 20,000; ``make
fuzz``: 10^5 each), mutants of
checksummed formats with valid checksums and tags; every one must end in a typed ``MoziError``
with a one-line message (the command line: one error line, exit status 1, 2 or 3).
"""

import pytest

from tests.fuzz_parsers import DEFAULT_COUNT, DEFAULT_SEED, TARGETS, fuzz

#: In-memory parsers take ~50 µs an input: they get ten times the inputs in the same time.
COUNTS = {"auth-frames": 10 * DEFAULT_COUNT, "link-frames": 10 * DEFAULT_COUNT,
          "messages": 10 * DEFAULT_COUNT}


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_parser_never_crashes(target):
    count = COUNTS.get(target, DEFAULT_COUNT)
    print(f"target {target}, {count} inputs, seed {DEFAULT_SEED} (replay: python -m "
          f"tests.fuzz_parsers {target} --count {count} --seed {DEFAULT_SEED})")
    crashes = fuzz(target, count, DEFAULT_SEED)
    assert not crashes, "\n".join(f"input {c.index}: {c.data!r:.300}\n{c.error}"
                                  for c in crashes[:3])
