"""Chat template rendering: compiled once, rendered per request, errors as QuickdraftError."""

import pytest

from quickdraft.chat import render_chat
from quickdraft.errors import QuickdraftError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_the_same_template_renders_each_requests_messages():
    first = render_chat(CHATML, [{"role": "user", "content": "hi"}], bos="", eos="")
    second = render_chat(CHATML, [{"role": "user", "content": "bye"}], bos="", eos="")
    assert first == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert second == "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"


def test_template_errors_and_malformed_messages_are_clear():
    with pytest.raises(QuickdraftError, match="chat template: roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", [{"role": "user", "content": "x"}],
                    bos="", eos="")
    with pytest.raises(QuickdraftError, match="needs 'role' and 'content'"):
        render_chat(CHATML, [{"content": "x"}], bos="", eos="")
