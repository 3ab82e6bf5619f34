#!/usr/bin/env bash
# Install imagepin with its admission webhook on a cluster without
# cert-manager: make a CA and a serving certificate for the webhook Service
# with openssl, store them in the Secret the manager mounts, apply
# config/with-webhook-own-certs and inject the CA into the webhook
# configuration. Run from the repository root with kubectl pointing at the
# cluster; run again to renew (the certificate lasts DAYS, default 365).
set -euo pipefail
cd "$(dirname "$0")/.."

NS=imagepin-system
SVC=imagepin-webhook-service
DAYS=${DAYS:-365}
KUBECTL=${KUBECTL:-kubectl}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days "$DAYS" -subj "/CN=imagepin-webhook-ca" \
	-keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=$SVC.$NS.svc" \
	-keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\n' "$SVC" "$NS" "$SVC" "$NS" >"$dir/ext"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
	-days "$DAYS" -extfile "$dir/ext" -out "$dir/tls.crt" 2>/dev/null

"$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f -
"$KUBECTL" -n "$NS" create secret tls imagepin-webhook-server-cert \
	--cert="$dir/tls.crt" --key="$dir/tls.key" --dry-run=client -o yaml | "$KUBECTL" apply -f -
"$KUBECTL" apply -k config/with-webhook-own-certs
"$KUBECTL" patch mutatingwebhookconfiguration imagepin-mutating-webhook-configuration --type json \
	-p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$(base64 -w0 <"$dir/ca.crt")\"}]"
echo "imagepin installed with its webhook; the CA expires in $DAYS days: run $0 again before then"
