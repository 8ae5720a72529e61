# sparsemm: slim Debian Python with SuiteSparse (CHOLMOD) and OpenBLAS, run as a non-root user.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends libsuitesparse-dev libopenblas0-pthread gcc g++ \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/sparsemm
COPY pyproject.toml README.md ./
COPY solver ./solver
COPY sparsemm ./sparsemm
RUN pip install --no-cache-dir . \
 && apt-get purge -y gcc g++ && apt-get autoremove -y

RUN useradd --create-home --uid 10001 sparsemm
USER sparsemm
HEALTHCHECK CMD ["python", "-c", "import sparsemm.solver"]
ENTRYPOINT ["sparsemm"]
CMD ["--help"]
