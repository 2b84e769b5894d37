# An example bulkhead config: three environments, each with an owner and its own rules.
# Run it with:  cargo run -- serve --config examples/bulkhead.hcl

server {
  listen   = "127.0.0.1:8080"
  data_dir = "bulkhead-data"     # relative to this file
  # Several instances behind a load balancer share one PostgreSQL (tokens, and a schema per
  # environment without storage of its own):
  # storage = "postgres://bulkhead@db/bulkhead"
  # How long a looked-up token is trusted before it is looked up again (a revocation made
  # elsewhere takes effect within it); "0s" looks it up on every request:
  # token_cache = "5s"
  # When audit records reach the disk: "writes" (records of writes before their answer, of
  # reads and refusals within a second) or "all" (every record before its answer):
  # audit_sync = "writes"
  #
  # TLS, verifying the client certificates the runners' CA issued (a service's certificate
  # block then requires one):
  # tls {
  #   cert_file      = "server.pem"
  #   key_file       = "server.key"
  #   client_ca_file = "runners-ca.pem"
  # }
  # The load balancers whose X-Forwarded-For names the client (from anyone else it is ignored):
  # trusted_proxies = ["10.0.0.0/24"]
}

team "platform" { members = ["pat", "quinn"] }
team "app"      { members = ["alice", "bob"] }

service "ci-staging" {}

# The production pipeline. It may use a static token (bulkhead token create service:ci-prod),
# or prove itself with its CI provider's OIDC ID token, which is what lets `pipeline.branches`
# below see the branch:
#
#   oidc {
#     issuer    = "https://token.actions.githubusercontent.com"
#     audience  = "bulkhead"
#     jwks_url  = "https://token.actions.githubusercontent.com/.well-known/jwks"
#     claims    = { repository = "acme/infra" }   # required: binds the repository
#   }
#
# and, with server.tls.client_ca_file, be refused without the runner's client certificate:
#
#   certificate { subject = "CN=runner-prod,O=acme" }
service "ci-prod" {}

# Each developer gets a sandbox of their own (sandbox-alice, sandbox-bob), created on first use.
personal "sandbox" {
  members = ["team:app"]
  read    = ["team:platform"]
}

environment "dev" {
  owner = "team:app"
  paths = ["envs/dev/**"]
  read  = ["team:app", "team:platform"]
  write = ["team:app", "team:platform"]
}

environment "staging" {
  owner = "team:platform"
  paths = ["envs/staging/**"]
  read  = ["team:app", "team:platform"]
  write = ["team:platform", "service:ci-staging"]
}

environment "prod" {
  owner          = "team:platform"
  paths          = ["envs/prod/**"]
  read           = ["team:app", "team:platform"]
  write          = ["service:ci-prod"]
  max_state_size = "64MiB"
  # Only from the runners' network (behind a load balancer, see trusted_proxies):
  # write_from = ["10.20.0.0/16"]

  # Protected: every write needs a change request approved by the owner (never its author),
  # named by the pipeline as ?change=<id> on the backend address, and used once.
  approval {
    required = 1
    expires  = "24h"
  }
  # With an oidc block on the service: apply only from these branches.
  # pipeline { branches = ["main"] }
  #
  # With OIDC, the apply can also be bound to what was approved: the commit the plan was made
  # from (the token's `sha` claim), and the plan itself (`bulkhead change attest`):
  #
  #   pipeline {
  #     branches = ["main"]
  #     bind     = ["commit", "plan"]
  #   }

  # Emergencies: time-boxed write without a change, with a mandatory reason, loudly recorded.
  breakglass {
    allowed = ["user:pat"]
    max_ttl = "2h"
  }
}
