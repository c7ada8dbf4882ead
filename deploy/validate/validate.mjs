#!/usr/bin/env node
// Validates Kubernetes manifests (a multi-document YAML stream on stdin or in the files
// named) offline against the API schemas: Kubernetes core and apps, the Prometheus
// Operator's ServiceMonitor and PrometheusRule, the Gateway API's GRPCRoute and HTTPRoute.
// Exit status 1 names every invalid document and field; unknown kinds are errors too.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import * as core from "kubernetes-models";
import * as prometheus from "@kubernetes-models/prometheus-operator";
import * as gateway from "@kubernetes-models/gateway-api";

// The packages export groups camel-cased: "monitoring.coreos.com" -> monitoringCoreosCom.
const camelCase = (group) => group.replace(/[.-]([a-z0-9])/g, (_, letter) => letter.toUpperCase());

// "apps/v1" -> the module namespace exporting its kinds ("v1" is the core group).
function modelFor(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  for (const root of [core, prometheus, gateway]) {
    const groupModule = group === "" ? root : root[group] ?? root[camelCase(group)];
    const versionModule = groupModule?.[version];
    if (versionModule?.[kind]) return versionModule[kind];
  }
  return undefined;
}

const inputs = process.argv.length > 2 ? process.argv.slice(2).map((f) => [f, readFileSync(f, "utf8")])
                                       : [["<stdin>", readFileSync(0, "utf8")]];
let documents = 0;
let errors = 0;
for (const [source, text] of inputs) {
  for (const parsed of parseAllDocuments(text)) {
    if (parsed.errors.length > 0) {
      console.error(`${source}: YAML error: ${parsed.errors[0].message}`);
      errors++;
      continue;
    }
    const manifest = parsed.toJS();
    if (manifest === null) continue;
    documents++;
    const name = `${source}: ${manifest.kind} ${manifest.metadata?.name ?? "(unnamed)"}`;
    const Model = modelFor(manifest.apiVersion ?? "", manifest.kind ?? "");
    if (!Model) {
      console.error(`${name}: no schema for apiVersion ${manifest.apiVersion} kind ${manifest.kind}`);
      errors++;
      continue;
    }
    try {
      new Model(manifest).validate();
      console.log(`ok ${name} (${manifest.apiVersion})`);
    } catch (error) {
      console.error(`${name}: ${error.message}`);
      errors++;
    }
  }
}
console.log(`${documents} documents, ${errors} invalid`);
process.exit(errors > 0 || documents === 0 ? 1 : 0);
