"""`moduleformer chat-template`: the server's Jinja engine renders chat templates exactly as
Hugging Face's apply_chat_template does (python3-jinja2 with the same environment is the
reference), reports a template's raise_exception() message, and refuses templates that
use what it lacks when they are loaded, naming the construct and line."""
import json
import os
import subprocess
import tempfile
import unittest

import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.environ.get("MF_CLI_BIN", os.path.join(ROOT, "build", "moduleformer"))
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "chat_templates")
BOS, EOS = "<s>", "</s>"

CONVERSATIONS = {
    "system_first": [
        {"role": "system", "content": "  You are terse.  "},
        {"role": "user", "content": "Hello there, assistant"},
        {"role": "assistant", "content": "Hi. What do you need?"},
        {"role": "user", "content": "A haiku about caches", "name": "ada"},
    ],
    "one_user": [{"role": "user", "content": "Hello"}],
    "quotes_unicode": [
        {"role": "user", "content": "Don't \"quote\" me\nplease \u2713 \u00e9t\u00e9 \U0001f600"},
        {"role": "assistant", "content": "Fine: 'ok'\ttabbed\\", "metadata": {"score": 0.5, "tags": ["a", "b"]}},
    ],
    "not_alternating": [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
}


class HuggingFaceRenderError(Exception):
    pass


def reference_render(template_text, messages, add_generation_prompt):
    """apply_chat_template's environment: sandboxed, trim_blocks, lstrip_blocks, loop
    controls, its tojson (ensure_ascii=False) and raise_exception."""
    def raise_exception(message):
        raise HuggingFaceRenderError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template_text).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 bos_token=BOS, eos_token=EOS)


class ChatTemplateTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)

    def tokenizer_dir(self, chat_template):
        """A tokenizer directory whose tokenizer_config.json carries the template."""
        with open(os.path.join(self.dir.name, "tokenizer_config.json"), "w") as f:
            json.dump({"bos_token": BOS, "eos_token": {"content": EOS, "special": True},
                       "chat_template": chat_template}, f)
        return self.dir.name

    def render(self, directory, messages, add_generation_prompt=True, extra=()):
        args = [CLI, "chat-template", "--tokenizer", directory] + list(extra)
        if not add_generation_prompt:
            args.append("--nogeneration_prompt")
        return subprocess.run(args, input=json.dumps(messages).encode(), capture_output=True, timeout=30)

    def test_templates_render_as_hugging_face_renders_them(self):
        compared = 0
        for name in sorted(os.listdir(TEMPLATES)):
            with open(os.path.join(TEMPLATES, name), encoding="utf-8") as f:
                template_text = f.read()
            directory = self.tokenizer_dir(template_text)
            for conversation, messages in CONVERSATIONS.items():
                for generation_prompt in (True, False):
                    with self.subTest(template=name, conversation=conversation, generation_prompt=generation_prompt):
                        result = self.render(directory, messages, generation_prompt)
                        try:
                            expected = reference_render(template_text, messages, generation_prompt)
                        except HuggingFaceRenderError as error:
                            self.assertEqual(result.returncode, 1, result.stdout)
                            self.assertEqual(result.stderr.decode().strip(), f"error: {error}")
                            continue
                        self.assertEqual(result.returncode, 0, result.stderr.decode())
                        self.assertEqual(result.stdout.decode(), expected)
                        compared += 1
        self.assertGreaterEqual(compared, 35)

    def test_named_templates_and_template_files(self):
        directory = self.tokenizer_dir([{"name": "tool_use", "template": "tools"},
                                        {"name": "default", "template": "{{ messages[0].content }}!"}])
        result = self.render(directory, CONVERSATIONS["one_user"])
        self.assertEqual(result.stdout.decode(), "Hello!")
        with open(os.path.join(directory, "chat_template.jinja"), "w") as f:
            f.write("{{ bos_token }}[{{ messages | length }}]\n")
        self.assertEqual(self.render(directory, CONVERSATIONS["one_user"]).stdout.decode(), "<s>[1]")
        override = os.path.join(directory, "override.jinja")
        with open(override, "w") as f:
            f.write("{{ eos_token }}")
        result = self.render(directory, CONVERSATIONS["one_user"], extra=["--chat-template", override])
        self.assertEqual(result.stdout.decode(), EOS)

    def test_without_a_template_the_plain_one_is_used(self):
        result = self.render(self.dir.name, CONVERSATIONS["system_first"][:2])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.decode(),
                         "System:   You are terse.  \n\nUser: Hello there, assistant\n\nAssistant:")

    def test_unsupported_or_broken_templates_are_refused_when_loaded(self):
        cases = {
            "{% macro greet(name) %}hi{% endmacro %}": ":1: unsupported statement '{% macro %}'",
            "line one\n{{ messages | wordcount }}": ":2: unsupported filter 'wordcount'",
            "{% if messages %}never closed": ":1: '{% if %}' is never closed",
            "{{ messages[0] + }}": ":1: expected an expression at the end of the tag",
            "{{ 'unterminated }}": "unterminated string literal",
            "{{ cycler(1, 2) }}": "unsupported function 'cycler'",
            "{% for m in messages %}{% endif %}": "unexpected 'endif'",
            "{{ m is frobnicated }}": "unsupported test 'frobnicated'",
        }
        for template_text, message in cases.items():
            with self.subTest(template=template_text):
                result = self.render(self.tokenizer_dir(template_text), CONVERSATIONS["one_user"])
                self.assertEqual(result.returncode, 1)
                self.assertIn("tokenizer_config.json" + (message if message.startswith(":") else ""),
                              result.stderr.decode())
                self.assertIn(message, result.stderr.decode())

    def test_runtime_errors_name_the_line(self):
        result = self.render(self.tokenizer_dir("ok\n{{ messages[0].content + 1 }}"), CONVERSATIONS["one_user"])
        self.assertEqual(result.returncode, 1)
        self.assertIn("tokenizer_config.json:2: unsupported operand types for +: str and int", result.stderr.decode())


if __name__ == "__main__":
    unittest.main()
