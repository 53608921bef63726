# MLflow server with the PostgreSQL driver and boto3 for S3 (MinIO) artefacts; versions as requirements.lock.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 boto3==1.44.8
