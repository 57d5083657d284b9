"""Which webhook is ours: only the one of the ML backend Label Studio reached /setup by gets our
auth header; a missing or switched-off one is a problem the admin is told how to fix."""

from ls_backend.labelstudio.webhooks import auth_header, check, normalized

OURS = "http://127.0.0.1:9090"
BASIC = auth_header(("admin", "pw"), None)


def backend(url: str) -> dict:
    return {"id": hash(url) % 1000, "url": url, "title": "t"}


def hook(hook_id: int, url: str, headers: dict | None = None, active: bool = True) -> dict:
    return {"id": hook_id, "url": url, "headers": headers or {}, "is_active": active}


def test_only_our_webhook_gets_the_header_and_keeps_its_other_headers():
    found = check(
        [backend("http://other.example:8000/"), backend(OURS)],
        [
            hook(1, "http://other.example:8000/webhook"),
            hook(2, f"{OURS}/webhook", {"X-Keep": "1"}),
        ],
        [f"{OURS}/"],
        BASIC,
    )
    assert found.patches == [(2, {"X-Keep": "1", **BASIC})]
    assert found.problem is None and found.missing == []


def test_a_webhook_that_has_the_header_is_left_alone():
    found = check([backend(OURS)], [hook(2, f"{OURS}/webhook", BASIC)], [OURS], BASIC)
    assert found.patches == [] and found.problem is None


def test_urls_match_however_they_are_spelled():
    assert normalized("HTTP://LocalHost:80/ml/") == "http://localhost/ml"
    assert normalized("https://h.example:443") == "https://h.example"
    assert normalized("http://[::1]:9090/") == "http://[::1]:9090"
    found = check([backend("http://LOCALHOST:80/")], [hook(3, "http://localhost/webhook")],
                  ["http://localhost/"], BASIC)  # fmt: skip
    assert found.patches == [(3, BASIC)]


def test_a_token_replaces_the_password_on_our_webhook():
    token = auth_header(("admin", "pw"), "a-webhook-token")
    assert token == {"Authorization": "Bearer a-webhook-token"}
    found = check([backend(OURS)], [hook(2, f"{OURS}/webhook", BASIC)], [OURS], token)
    assert found.patches == [(2, token)]  # the password leaves Label Studio


def test_no_webhook_for_a_host_without_a_dot_says_why_and_what_to_do():
    url = "http://ls-backend:9090"
    found = check([backend(url)], [], [url], None)
    assert found.missing == [url]
    assert "no webhook for http://ls-backend:9090/webhook" in found.problem
    assert "no dot" in found.problem and "ls-backend.internal" in found.problem


def test_no_webhook_for_a_dotted_host_says_it_was_deleted_or_refused():
    found = check([backend(OURS)], [hook(1, "http://other.example/webhook")], [OURS], BASIC)
    assert found.missing == [OURS] and "no dot" not in found.problem
    assert "Reconnect the model" in found.problem and found.patches == []


def test_a_switched_off_webhook_is_a_problem():
    found = check([backend(OURS)], [hook(2, f"{OURS}/webhook", active=False)], [OURS], None)
    assert "switched off" in found.problem


def test_when_no_backend_has_our_url_nobody_gets_the_header():
    found = check([backend("https://ml.example")], [hook(1, "https://ml.example/webhook")],
                  ["http://10.0.0.5:9090"], BASIC)  # fmt: skip
    assert found.patches == []
    assert "cannot tell which webhook is its own" in found.problem
    # Without a header to give, there is nothing to warn about: we cannot tell.
    assert (
        check([backend("https://ml.example")], [], ["http://10.0.0.5:9090"], None).problem is None
    )
