"""The caches that make redacting a host's repeated command lines cheap (tracer/redact.py
_PLAIN, _CLEAN) hold lines with nothing to mask, and never change what is masked."""

from whodid.tracer import redact as R

SECRET_LINES = [["mysql", "-uroot", "-pS3cretPw", "prod"], ["curl", "-u", "bob:S3cretPw", "https://x"],
                ["env", "PGPASSWORD=S3cretPw", "psql"], ["sh", "-c", "echo S3cretPw | passwd --stdin bob"]]


def test_a_line_is_masked_alike_the_first_time_and_every_time_after():
    for argv in SECRET_LINES + [["ls", "-la"], ["curl", "-fsS", "http://localhost/health"]]:
        first = R.redact(argv)
        assert [R.redact(list(argv)) for _ in range(3)] == [first] * 3
    for argv in SECRET_LINES:
        out, changed = R.redact(argv)
        assert changed and not any("S3cretPw" in a for a in out), out


def test_the_caches_hold_no_line_with_a_secret():
    for argv in SECRET_LINES:
        R.redact(argv)
        R.redact(argv)
    assert not [line for line in R._PLAIN | R._CLEAN if "S3cretPw" in line]
    R.redact(["ls", "-la"])
    assert "\nls\n-la\n" in R._PLAIN
