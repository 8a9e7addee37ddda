// Package agentv1 holds the generated code of the Writ agent's own gRPC
// services on its Workload API socket (writ.agent.v1), one .proto file per
// service: DownstreamService (downstream.proto) lets a nested Writ server
// obtain its CA from a parent deployment.
package agentv1
