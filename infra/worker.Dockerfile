# Prefect process worker with the GroupDiff project installed (build context: repository root).
FROM prefecthq/prefect:3.9.1-python3.11
WORKDIR /opt/groupdiff
COPY pyproject.toml requirements.lock README.md ./
COPY groupdiff ./groupdiff
COPY registry ./registry
COPY flows ./flows
COPY infra ./infra
RUN pip install --no-cache-dir -c requirements.lock ".[platform]"
