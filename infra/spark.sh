#!/usr/bin/env bash
# Spark 3.5 runs from the pyspark package in local mode; this fetches the extra jars once:
# the Cassandra connector (with its own dependencies) and s3a (hadoop-aws + AWS SDK bundle).
# Usage: infra/spark.sh install|status
set -euo pipefail
SERVICE=spark
source "$(dirname "$0")/lib.sh"

# pyspark already ships these, in the versions Spark was built with.
PROVIDED="scala-library,scala-reflect,slf4j-api,commons-lang3,metrics-core,paranamer"

install() {
  if [[ -f "$CLICKAGG_SPARK_JARS/spark-cassandra-connector_2.12-3.5.1.jar" ]]; then say "jars present in $CLICKAGG_SPARK_JARS"; return; fi
  require_java17
  say "fetching spark-cassandra-connector 3.5.1, hadoop-aws 3.3.4 and aws-java-sdk-bundle from Maven Central (about 300 MB)"
  rm -rf "$CLICKAGG_SPARK_JARS.tmp"
  maven_copy_dependencies "$REPO_ROOT/infra/spark/pom.xml" "$CLICKAGG_SPARK_JARS.tmp" "the Spark jars" \
    -DexcludeArtifactIds="$PROVIDED"
  mkdir -p "$(dirname "$CLICKAGG_SPARK_JARS")"
  mv "$CLICKAGG_SPARK_JARS.tmp" "$CLICKAGG_SPARK_JARS"
}

case "${1:-}" in
  install) install ;;
  status) printf '%-12s %-8s %s\n' spark "$SPARK_MASTER" "jars in $CLICKAGG_SPARK_JARS (runs per job, no daemon)" ;;
  *) echo "usage: $0 install|status" >&2; exit 2 ;;
esac
