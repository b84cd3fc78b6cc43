"""The README's demo, ``python -m secretcache.demo``, run as a newcomer runs it:
the printed curl commands work, Ctrl-C ends it cleanly, and a bad setting
stops it before it prints instructions that would not work."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.support import clean_environment, free_port, http_request, wait_for_port


class DemoTests(SynchronousTestCase):
    def run_demo(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "secretcache.demo", *args],
            env=clean_environment(**env),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def test_the_printed_curl_commands_work_and_ctrl_c_exits_0(self) -> None:
        port = free_port()
        out = tempfile.TemporaryFile(mode="w+")
        self.addCleanup(out.close)
        demo = subprocess.Popen(
            [sys.executable, "-m", "secretcache.demo"],
            env=clean_environment(SECRETCACHE_DEMO_PORT=str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )

        def kill() -> None:
            if demo.poll() is None:
                demo.kill()
                demo.wait()

        self.addCleanup(kill)
        wait_for_port(port, demo, timeout=60)
        out.seek(0)
        printed = out.read()
        commands = re.findall(
            r'curl -s -H "([^:]+): ([^"]+)" \\\n\s+\'([^\']+)\'', printed
        )
        self.assertEqual(len(commands), 2, printed)
        bodies = []
        for header, token, url in commands:
            match = re.fullmatch(rf"http://127\.0\.0\.1:{port}(/.*)", url)
            assert match is not None, url
            answer = http_request(port, "GET", match.group(1), {header: token})
            self.assertEqual(answer.status, 200, answer.body)
            bodies.append(answer.body)
        self.assertIn(b"not-a-real-password", bodies[0])  # the AWS dialect's JSON
        self.assertEqual(
            bodies[1], b'{"username": "demo", "password": "not-a-real-password"}'
        )
        demo.send_signal(signal.SIGINT)
        started = time.monotonic()
        self.assertEqual(demo.wait(10), 0)
        self.assertLess(time.monotonic() - started, 5)

    def test_a_bad_demo_port_stops_it_with_one_line(self) -> None:
        result = self.run_demo(SECRETCACHE_DEMO_PORT="80a")
        self.assertEqual(result.returncode, 2)
        self.assertEqual(result.stdout, "")
        self.assertIn("invalid SECRETCACHE_DEMO_PORT value '80a'", result.stderr)

    def test_a_bad_option_stops_it_before_the_instructions(self) -> None:
        result = self.run_demo("--ttl", "5x", SECRETCACHE_DEMO_PORT=str(free_port()))
        self.assertEqual(result.returncode, 2)
        self.assertNotIn("curl", result.stdout)
        self.assertIn("invalid --ttl value '5x'", result.stderr)
