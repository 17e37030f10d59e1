"""The spark-submit options the DAGs share."""

from __future__ import annotations

from spark_jobs.session import submit_options

JARS = [
    "aws-java-sdk-bundle-1.12.262.jar", "hadoop-aws-3.3.4.jar", "java-driver-core-shaded-4.18.1.jar",
    "spark-cassandra-connector_2.12-3.5.1.jar",
]


def _jars_dir(tmp_path):
    for name in [*JARS, "README.txt"]:
        (tmp_path / name).write_bytes(b"")
    return {"CLICKAGG_SPARK_JARS": str(tmp_path)}


def test_a_job_without_s3_is_submitted_without_the_s3_jars(tmp_path):
    jars = submit_options(_jars_dir(tmp_path), s3=False)["jars"].split(",")

    assert [name.rsplit("/", 1)[-1] for name in jars] == ["java-driver-core-shaded-4.18.1.jar",
                                                          "spark-cassandra-connector_2.12-3.5.1.jar"]


def test_a_job_with_s3_gets_every_jar(tmp_path):
    jars = submit_options(_jars_dir(tmp_path), s3=True)["jars"].split(",")

    assert [name.rsplit("/", 1)[-1] for name in jars] == JARS


def test_an_empty_jars_folder_passes_no_jars(tmp_path):
    assert submit_options({"CLICKAGG_SPARK_JARS": str(tmp_path)}, s3=True)["jars"] is None
