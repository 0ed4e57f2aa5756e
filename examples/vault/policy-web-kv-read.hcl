# What the `web` role's tokens may do: read the web app's KV v2 secrets.
path "secret/data/web/*" {
  capabilities = ["read"]
}
