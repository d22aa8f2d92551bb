"""The secrets grep (tests/leaks.py) finds what it is for: whole, cut and URL-encoded secrets."""

from __future__ import annotations

from tests.leaks import find_leaks, fragments

SECRET = "EAAtestTOKEN/secret+0123456789"


def test_it_finds_a_secret_however_it_leaked() -> None:
    doors: dict[str, bytes | str] = {
        "whole": f"token={SECRET}",
        "cut at 40": f"id {SECRET[:14]!r}...",
        "url-encoded": "https://x/?t=EAAtestTOKEN%2Fsecret%2B0123456789",
        "bytes": SECRET[10:25].encode(),
        "clean": "nothing to see, EAA and 0123 alone are not enough",
    }
    leaks = find_leaks(doors, [SECRET])
    assert [leak.split(":")[0] for leak in leaks] == ["whole", "cut at 40", "url-encoded", "bytes"]
    assert all(SECRET not in leak for leak in leaks)  # the report does not leak it either
    assert find_leaks({"clean": doors["clean"]}, [SECRET, ""]) == []


def test_fragments_of_a_short_secret_are_the_secret() -> None:
    assert fragments("short") == {"short"}
    assert "EAAtestTOKEN" in fragments(SECRET) and len(fragments(SECRET)) > 15
