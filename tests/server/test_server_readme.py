"""The README's client examples, run as written against a real server on the tiny models.

The server is the one ``quickdraft serve`` builds for the default target: it serves the name
``models.served_names`` gives that target (what ``quickdraft models`` lists, and what the
README's examples ask for), with the README's API key. Only the address changes (the test server
listens on a free port, not on 8000).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quickdraft.models import DEFAULT_TARGET, served_names
from quickdraft.server import create_app
from serverutil import make_engine, running

README = Path(__file__).resolve().parents[2] / "README.md"
README_URL = "http://127.0.0.1:8000/v1"


def server_examples() -> list[str]:
    """The Python code blocks of the README's server section."""
    text = README.read_text()
    section = text[text.index("## OpenAI-compatible server"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_default_target_is_served_under_the_name_the_readme_uses():
    assert served_names(DEFAULT_TARGET) == (DEFAULT_TARGET,) == ("qwen2.5-coder-1.5b-instruct-iq4_nl",)
    examples = server_examples()
    assert examples and all(README_URL in code and 'api_key="KEY"' in code for code in examples)
    assert set(re.findall(r'model="([^"]+)"', "".join(examples))) == {DEFAULT_TARGET}


@pytest.fixture(scope="module")
def readme_server(tiny_pair):
    with running(create_app(make_engine(tiny_pair), served_names(DEFAULT_TARGET), api_key="KEY")) as url:
        yield url


@pytest.mark.parametrize("index", range(len(server_examples())))
def test_the_readme_server_examples_run_as_written(readme_server, index, capsys):
    code = server_examples()[index].replace(README_URL, f"{readme_server}/v1")
    exec(compile(code, f"README.md server example {index}", "exec"), {})
    assert capsys.readouterr().out.strip()  # each example prints what it got
