#!/usr/bin/env bash
# Cloud Scheduler calls POST /orchestrator after each US close with an OIDC token of its own
# service account (audience: the service URL); the app checks the token and the email itself too.
# Over HTTP a body that does not say "dryRun": false only plans: start with the default (a dry run).
#   PROJECT=… REGION=… SERVICE_URL=https://commander-HASH-REGION.a.run.app bash deploy/scheduler.sh
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${SERVICE_URL:?}"
BODY=${BODY:-'{"trigger": "scheduled", "dryRun": true}'}
gcloud scheduler jobs create http commander-paper \
  --project "$PROJECT" --location "$REGION" \
  --schedule "30 16 * * 1-5" --time-zone "America/New_York" \
  --uri "$SERVICE_URL/orchestrator" --http-method POST \
  --headers "Content-Type=application/json" --message-body "$BODY" \
  --oidc-service-account-email "commander-scheduler@$PROJECT.iam.gserviceaccount.com" \
  --oidc-token-audience "$SERVICE_URL" \
  --attempt-deadline 30m --max-retry-attempts 0
