"""The Lambda examples' handlers (examples/lambda), run against the real
server configured as the extension is in Lambda: the token is
AWS_SESSION_TOKEN and the port comes from PARAMETERS_SECRETS_EXTENSION_HTTP_PORT."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest

from tests.support import Secretcache, clean_environment, free_port
from tests.test_integration import DB_SECRET, MotoTestCase

EXAMPLES = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "examples", "lambda"
)
SESSION_TOKEN = "example-session-token-3f9d"


class LambdaExampleTests(MotoTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.port = free_port()
        self.name = self.secret("db", DB_SECRET)
        # Both loopbacks, as in Lambda: the handlers call "localhost".
        server = Secretcache(
            {
                "AWS_SESSION_TOKEN": SESSION_TOKEN,
                "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.proxy.url,
            },
            ["--port", f"tcp6:{self.port}:interface=\\:\\:1"],
            port=self.port,
        )
        self.addCleanup(server.cleanup)
        self.env = clean_environment(
            AWS_SESSION_TOKEN=SESSION_TOKEN,
            PARAMETERS_SECRETS_EXTENSION_HTTP_PORT=str(self.port),
            DB_SECRET_ID=self.name,
        )

    def check(self, output: str) -> None:
        result = json.loads(output)
        self.assertEqual(result["user"], DB_SECRET["username"])
        self.assertTrue(result["version"])

    def test_python_handler(self) -> None:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, handler; print(json.dumps(handler.handler({}, None)))",
            ],
            cwd=os.path.join(EXAMPLES, "python"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        self.check(done.stdout)

    def test_nodejs_handler(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise SkipTest("Node.js is not installed")
        done = subprocess.run(
            [
                node,
                "--input-type=module",
                "-e",
                "import { handler } from './index.mjs';"
                "console.log(JSON.stringify(await handler({})));",
            ],
            cwd=os.path.join(EXAMPLES, "nodejs"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        self.check(done.stdout)
