// An Azure Batch pool that runs scheduled batchscore jobs: a user-assigned managed identity on
// the pool, allowed to read and write the storage account ("Storage Blob Data Contributor") and
// to add tasks to the account's jobs ("Azure Batch Job Submitter", what `batchscore batch
// fan-out` does since job-scoped task tokens were retired on 30 September 2024). Pools with
// managed identities can only be created through ARM, not the Batch service API.
//
//   az deployment group create -g RG -f infra/batch-pool.bicep \
//     -p batchAccountName=ACCOUNT storageAccountName=STORAGE appVersion=1.0
//
// Outputs the identity's client id: pass it to `batchscore batch plan --client-id`.
// The Batch account must accept Microsoft Entra ID authentication (allowedAuthenticationModes
// includes 'AAD', as for new accounts), and hold an application `batchscore` whose package
// version `appVersion` is the Linux batchscore binary (zip with `batchscore` at its root):
//   az batch application package create -g RG -n ACCOUNT --application-name batchscore \
//     --version-name 1.0 --package-file batchscore.zip

@description('Existing Batch account.')
param batchAccountName string

@description('Existing storage account holding the readings, the registry and the output.')
param storageAccountName string

@description('Pool id: what `batchscore batch plan --pool` names.')
param poolId string = 'batchscore'

@description('Version of the `batchscore` application package the nodes get.')
param appVersion string

param location string = resourceGroup().location
param identityName string = 'batchscore-pool'
param vmSize string = 'Standard_D4s_v5'

@description('Task slots per node: one shard per core uses the node; batchscore runs one worker per core of a slot (--threads).')
param taskSlotsPerNode int = 1

@description('Nodes between runs and during them; autoscale follows pending tasks (evaluated every 5 minutes, the shortest Batch allows).')
param minNodes int = 0
param maxNodes int = 8

resource batchAccount 'Microsoft.Batch/batchAccounts@2024-07-01' existing = {
  name: batchAccountName
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: identityName
  location: location
}

// Built-in role ids (the same in every tenant).
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var batchJobSubmitter = '48e5e92e-a480-4e71-aa9c-2778f4c13781'

resource storageRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: storageAccount
  name: guid(storageAccount.id, identity.id, storageBlobDataContributor)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource batchRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: batchAccount
  name: guid(batchAccount.id, identity.id, batchJobSubmitter)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', batchJobSubmitter)
  }
}

resource pool 'Microsoft.Batch/batchAccounts/pools@2024-07-01' = {
  parent: batchAccount
  name: poolId
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    vmSize: vmSize
    taskSlotsPerNode: taskSlotsPerNode
    // Spread shards over nodes: a lost node takes few of them with it.
    taskSchedulingPolicy: {
      nodeFillType: 'Spread'
    }
    deploymentConfiguration: {
      virtualMachineConfiguration: {
        imageReference: {
          publisher: 'Canonical'
          offer: '0001-com-ubuntu-server-jammy'
          sku: '22_04-lts'
          version: 'latest'
        }
        nodeAgentSkuId: 'batch.node.ubuntu 22.04'
      }
    }
    applicationPackages: [
      {
        id: resourceId('Microsoft.Batch/batchAccounts/applications', batchAccountName, 'batchscore')
        version: appVersion
      }
    ]
    scaleSettings: {
      autoScale: {
        evaluationInterval: 'PT5M'
        // Nodes for the tasks waiting or running, sampled over the last five minutes; nodes
        // leave only when their tasks are done.
        formula: '$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 5);\n$tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 5)));\n$TargetDedicatedNodes = max(${minNodes}, min(${maxNodes}, $tasks / ${taskSlotsPerNode}));\n$NodeDeallocationOption = taskcompletion;'
      }
    }
  }
  dependsOn: [
    storageRole
    batchRole
  ]
}

output poolId string = pool.name
output identityClientId string = identity.properties.clientId
output identityResourceId string = identity.id
