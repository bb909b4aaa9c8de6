# codeflow in a container: `docker build -t codeflow .`, then see README "Run it in
# production". The database lives in the volume /var/lib/codeflow; TLS belongs to the
# reverse proxy in front (pass --trusted-proxy with its network).
FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /var/lib/codeflow codeflow
COPY . /src
RUN pip install --no-cache-dir '/src[serve,sqlite]' && rm -rf /src
USER codeflow
VOLUME /var/lib/codeflow
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["codeflow"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--storage", "/var/lib/codeflow/codeflow.db", "--log-format", "json"]
