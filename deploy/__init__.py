"""Deployment of the pack onto Nuclio (Docker or Kubernetes): deploy.sh, remove.sh and their config helper."""
