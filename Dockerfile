# The fleet service (and `loa db upgrade`, `loa dashboards publish`, the simulator). Built by
# docker-compose.yml; runs `loa serve`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY fleet_service ./fleet_service
COPY broker ./broker
COPY simulators ./simulators
COPY dashboards ./dashboards
RUN pip install --no-cache-dir . && useradd --system --home /app loa
USER loa
EXPOSE 8000
CMD ["loa", "serve", "--host", "0.0.0.0"]
