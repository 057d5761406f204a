"""The page's token field: the header rule the client and server share, applied before sending."""

from __future__ import annotations

import pytest

from demo._predict import _token
from detstack.errors import ConfigError


def test_an_empty_token_field_sends_no_token():
    assert _token("   ") is None
    assert _token(" s3cret-token ") == "s3cret-token"


@pytest.mark.parametrize(
    ("text", "rule"),
    [("Zt4hS9kq\r\nX-Injected: 1", "line break"), ("Zt4hS9kq more", "a space")],
)
def test_a_token_no_header_can_carry_is_refused_by_the_shared_rule_without_echoing_it(text, rule):
    with pytest.raises(ConfigError, match=rule) as caught:
        _token(text)
    assert "Zt4hS9kq" not in str(caught.value)
