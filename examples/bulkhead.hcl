# An example bulkhead config: three environments, each with an owner and its own rules.
# Run it with:  cargo run -- serve --config examples/bulkhead.hcl

server {
  listen   = "127.0.0.1:8080"
  data_dir = "bulkhead-data"     # relative to this file
}

team "platform" { members = ["pat"] }
team "app"      { members = ["alice", "bob"] }

service "ci-staging" {}
service "ci-prod" {}              # tokens: bulkhead token create service:ci-prod

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
}
