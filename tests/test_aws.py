"""Region and endpoint, resolved as botocore resolves them: its variables, its
endpoint rules (FIPS, dual-stack), and our options over both."""

from __future__ import annotations

import os
from collections.abc import Sequence

import botocore.session
from twisted.trial.unittest import SynchronousTestCase

from secretcache.aws import Upstream, resolve_upstream
from secretcache.config import ConfigError
from tests.test_config import load


class ResolveUpstreamTests(SynchronousTestCase):
    def resolve(self, env: dict[str, str], argv: Sequence[str] = ()) -> Upstream:
        # botocore reads its variables from os.environ; give it only these
        # (and no shared config files from the machine running the tests).
        environ = {
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            **env,
        }
        self.patch(os, "environ", environ)
        settings = load(argv, {"SECRETCACHE_TOKEN": "tok"})
        return resolve_upstream(settings, botocore.session.Session(), environ)

    def test_region_gives_the_public_endpoint(self) -> None:
        upstream = self.resolve({"AWS_REGION": "eu-west-1"})
        self.assertEqual(
            (upstream.region, upstream.endpoint_url),
            ("eu-west-1", "https://secretsmanager.eu-west-1.amazonaws.com"),
        )

    def test_aws_region_wins_over_aws_default_region(self) -> None:
        upstream = self.resolve(
            {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}
        )
        self.assertEqual(upstream.region, "eu-west-1")
        self.assertEqual(
            self.resolve({"AWS_DEFAULT_REGION": "us-west-2"}).region, "us-west-2"
        )

    def test_fips_dual_stack_and_partitions_match_a_botocore_client(self) -> None:
        # The reference is where botocore's own client sends GetSecretValue
        # (its meta.endpoint_url is the older partition-based guess).
        for env in (
            {"AWS_REGION": "us-east-1", "AWS_USE_FIPS_ENDPOINT": "true"},
            {"AWS_REGION": "eu-west-1", "AWS_USE_DUALSTACK_ENDPOINT": "true"},
            {
                "AWS_REGION": "us-gov-west-1",
                "AWS_USE_FIPS_ENDPOINT": "true",
                "AWS_USE_DUALSTACK_ENDPOINT": "true",
            },
            {"AWS_REGION": "cn-north-1"},
        ):
            upstream = self.resolve(env)
            self.assertEqual(upstream.endpoint_url, self.botocore_sends_to(env), env)
        self.assertIn(
            "-fips.",
            self.resolve(
                {"AWS_REGION": "us-east-1", "AWS_USE_FIPS_ENDPOINT": "true"}
            ).endpoint_url,
        )

    def botocore_sends_to(self, env: dict[str, str]) -> str:
        self.resolve(env)  # the same os.environ for the client
        client = botocore.session.Session().create_client(
            "secretsmanager",
            region_name=env["AWS_REGION"],
            aws_access_key_id="AKIDEXAMPLE",
            aws_secret_access_key="example",
        )
        self.addCleanup(client.close)
        sent: list[str] = []

        class Stop(Exception):
            pass

        def stop(request: object, **kwargs: object) -> None:
            sent.append(getattr(request, "url", ""))
            raise Stop()

        client.meta.events.register("before-send", stop)
        self.assertRaises(Stop, client.get_secret_value, SecretId="x")
        return sent[0].rstrip("/")

    def test_configured_endpoints_service_specific_first_option_over_all(
        self,
    ) -> None:
        env = {"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
        self.assertEqual(self.resolve(env).endpoint_url, "http://127.0.0.1:1")
        env["AWS_ENDPOINT_URL_SECRETS_MANAGER"] = "http://127.0.0.1:2"
        self.assertEqual(self.resolve(env).endpoint_url, "http://127.0.0.1:2")
        upstream = self.resolve(env, ["--endpoint-url", "https://127.0.0.1:3"])
        self.assertEqual(upstream.endpoint_url, "https://127.0.0.1:3")
        env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
        self.assertEqual(
            self.resolve(env).endpoint_url,
            "https://secretsmanager.us-east-1.amazonaws.com",
        )

    def test_bad_values_name_where_they_came_from(self) -> None:
        cases = [
            ({}, "no AWS region"),
            ({"AWS_REGION": "us east"}, "'us east' (from AWS_REGION)"),
            (
                {"AWS_DEFAULT_REGION": "US_EAST"},
                "'US_EAST' (from AWS_DEFAULT_REGION",
            ),
            (
                {"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "ftp://x"},
                "invalid AWS_ENDPOINT_URL value 'ftp://x'",
            ),
            (
                {
                    "AWS_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL_SECRETS_MANAGER": "http://h/?q=1",
                },
                "AWS_ENDPOINT_URL_SECRETS_MANAGER value 'http://h/?q=1': a query",
            ),
        ]
        for env, fragment in cases:
            error = self.assertRaises(ConfigError, self.resolve, env)
            self.assertIn(fragment, str(error))
            self.assertEqual(len(str(error).splitlines()), 1)
